//! `GET /v1/usage`: the tenant's gateway usage, summed by day or model.

use actix_web::{HttpResponse, web};
use chrono::{NaiveDate, Utc};
use serde::{Deserialize, Serialize};

use crate::auth::extract::{Caller, ReadUsage};
use crate::db::UsageGrouping;
use crate::error::Error;
use crate::http::problem::method_not_allowed;
use crate::state::AppState;

/// Longest period one query may cover.
const MAX_DAYS: i64 = 366;

/// Registers the routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/v1/usage")
            .route(web::get().to(get_usage))
            .default_service(web::to(method_not_allowed)),
    );
}

/// How to group.
#[derive(Debug, Clone, Copy, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum GroupBy {
    /// By UTC day.
    Day,
    /// By upstream model.
    Model,
    /// By agent (`-` for calls made for no agent).
    Agent,
    /// By run (`-` for calls not made with a run token).
    Run,
}

/// Filters.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct UsageQuery {
    /// `day` (default), `model`, `agent` or `run`.
    group_by: Option<GroupBy>,
    /// First day, `YYYY-MM-DD` (default: 30 days ago).
    from: Option<NaiveDate>,
    /// Last day, `YYYY-MM-DD`, inclusive (default: today, UTC).
    to: Option<NaiveDate>,
}

/// Totals for one day or model.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct UsageRow {
    /// The day or the model.
    key: String,
    /// Calls.
    requests: i64,
    /// Prompt tokens.
    input_tokens: i64,
    /// Completion tokens.
    output_tokens: i64,
    /// Cost in US dollars, from the configured price table.
    cost_usd: f64,
}

/// The summary.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct UsageSummary {
    /// First day covered.
    from: NaiveDate,
    /// Last day covered.
    to: NaiveDate,
    /// One row per group.
    data: Vec<UsageRow>,
}

/// The tenant's gateway usage.
#[utoipa::path(
    get, path = "/v1/usage", tag = "usage",
    params(UsageQuery),
    responses(
        (status = 200, description = "Totals", body = UsageSummary),
        (status = 400, description = "Invalid filter", body = crate::http::problem::Problem, content_type = "application/problem+json"),
    ),
    security(("api_key" = []))
)]
pub async fn get_usage(
    caller: Caller<ReadUsage>,
    state: web::Data<AppState>,
    query: web::Query<UsageQuery>,
) -> Result<HttpResponse, Error> {
    let q = query.into_inner();
    let to = q.to.unwrap_or_else(|| Utc::now().date_naive());
    let in_range = |d: NaiveDate| (1970..=9999).contains(&chrono::Datelike::year(&d));
    if !in_range(to) || q.from.is_some_and(|f| !in_range(f)) {
        return Err(Error::InvalidQuery(
            "dates must be between 1970 and 9999".to_owned(),
        ));
    }
    let from = q
        .from
        .or_else(|| to.checked_sub_signed(chrono::TimeDelta::days(30)))
        .unwrap_or(to);
    if from > to || (to - from).num_days() > MAX_DAYS {
        return Err(Error::InvalidQuery(format!(
            "`from` must not be after `to`, and the period at most {MAX_DAYS} days"
        )));
    }
    let grouping = match q.group_by.unwrap_or(GroupBy::Day) {
        GroupBy::Day => UsageGrouping::Day,
        GroupBy::Model => UsageGrouping::Model,
        GroupBy::Agent => UsageGrouping::Agent,
        GroupBy::Run => UsageGrouping::Run,
    };
    let day = |d: NaiveDate| d.format("%Y-%m-%d").to_string();
    let totals = caller
        .scope(&state.db)
        .usage_totals(grouping, &day(from), &day(to))
        .await?;
    Ok(HttpResponse::Ok().json(UsageSummary {
        from,
        to,
        data: totals
            .into_iter()
            .map(|t| UsageRow {
                key: t.key,
                requests: t.requests,
                input_tokens: t.input_tokens,
                output_tokens: t.output_tokens,
                cost_usd: t.cost_micro_usd as f64 / 1e6,
            })
            .collect(),
    }))
}
