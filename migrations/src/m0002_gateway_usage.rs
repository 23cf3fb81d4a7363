//! The gateway's usage ledger: one row per model call.

use sea_orm_migration::prelude::*;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m0002_gateway_usage"
    }
}

#[derive(DeriveIden)]
enum GatewayUsage {
    Table,
    Id,
    TenantId,
    Principal,
    Endpoint,
    RequestedModel,
    Provider,
    Model,
    InputTokens,
    OutputTokens,
    CostMicroUsd,
    LatencyMs,
    Status,
    Outcome,
    Day,
    CreatedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let text = |name: GatewayUsage, len: u32| {
            ColumnDef::new(name).string_len(len).not_null().to_owned()
        };
        let int = |name: GatewayUsage| ColumnDef::new(name).big_integer().not_null().to_owned();
        manager
            .create_table(
                Table::create()
                    .table(GatewayUsage::Table)
                    .col(
                        ColumnDef::new(GatewayUsage::Id)
                            .big_integer()
                            .not_null()
                            .auto_increment()
                            .primary_key(),
                    )
                    .col(text(GatewayUsage::TenantId, 40))
                    .col(text(GatewayUsage::Principal, 100))
                    .col(text(GatewayUsage::Endpoint, 32))
                    .col(text(GatewayUsage::RequestedModel, 200))
                    .col(text(GatewayUsage::Provider, 100))
                    .col(text(GatewayUsage::Model, 200))
                    .col(int(GatewayUsage::InputTokens))
                    .col(int(GatewayUsage::OutputTokens))
                    .col(int(GatewayUsage::CostMicroUsd))
                    .col(int(GatewayUsage::LatencyMs))
                    .col(ColumnDef::new(GatewayUsage::Status).integer().not_null())
                    .col(text(GatewayUsage::Outcome, 32))
                    .col(text(GatewayUsage::Day, 10))
                    .col(
                        ColumnDef::new(GatewayUsage::CreatedAt)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_gateway_usage_tenant_day")
                    .table(GatewayUsage::Table)
                    .col(GatewayUsage::TenantId)
                    .col(GatewayUsage::Day)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(
                Table::drop()
                    .table(GatewayUsage::Table)
                    .if_exists()
                    .to_owned(),
            )
            .await
    }
}
