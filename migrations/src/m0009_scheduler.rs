//! The scheduler: runs (the durable queue), workers, their one-time join
//! tokens, and the placement round counter that serialises placement across
//! control-plane replicas.

use sea_orm_migration::prelude::*;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m0009_scheduler"
    }
}

#[derive(DeriveIden)]
enum Tenants {
    Table,
    Id,
}

#[derive(DeriveIden)]
enum Runs {
    Table,
    Id,
    TenantId,
    Spec,
    Image,
    CpuMillis,
    MemoryMib,
    State,
    Reason,
    Attempts,
    MaxAttempts,
    Epoch,
    WorkerId,
    PlacedRound,
    ExitCode,
    Stdout,
    Stderr,
    CancelRequestedAt,
    CreatedAt,
    PlacedAt,
    StartingAt,
    RunningAt,
    FinishedAt,
    LostAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum Workers {
    Table,
    Id,
    Name,
    CredentialHash,
    State,
    CpuMillis,
    MemoryMib,
    Slots,
    Images,
    LastHeartbeatAt,
    ConnectedAt,
    CreatedAt,
}

#[derive(DeriveIden)]
enum WorkerJoinTokens {
    Table,
    Id,
    TokenHash,
    CreatedAt,
    ExpiresAt,
    UsedAt,
    WorkerId,
}

#[derive(DeriveIden)]
enum SchedulerRounds {
    Table,
    Id,
    Round,
}

fn id(col: impl IntoIden) -> ColumnDef {
    ColumnDef::new(col).string_len(40).not_null().to_owned()
}

fn time(col: impl IntoIden) -> ColumnDef {
    ColumnDef::new(col)
        .timestamp_with_time_zone()
        .not_null()
        .to_owned()
}

fn maybe_time(col: impl IntoIden) -> ColumnDef {
    ColumnDef::new(col)
        .timestamp_with_time_zone()
        .null()
        .to_owned()
}

fn big(col: impl IntoIden) -> ColumnDef {
    ColumnDef::new(col).big_integer().not_null().to_owned()
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Workers::Table)
                    .col(id(Workers::Id).primary_key())
                    .col(
                        ColumnDef::new(Workers::Name)
                            .string_len(100)
                            .not_null()
                            .unique_key(),
                    )
                    .col(
                        ColumnDef::new(Workers::CredentialHash)
                            .string_len(64)
                            .null()
                            .unique_key(),
                    )
                    .col(ColumnDef::new(Workers::State).string_len(16).not_null())
                    .col(big(Workers::CpuMillis))
                    .col(big(Workers::MemoryMib))
                    .col(big(Workers::Slots))
                    .col(ColumnDef::new(Workers::Images).text().not_null())
                    .col(maybe_time(Workers::LastHeartbeatAt))
                    .col(maybe_time(Workers::ConnectedAt))
                    .col(time(Workers::CreatedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(WorkerJoinTokens::Table)
                    .col(id(WorkerJoinTokens::Id).primary_key())
                    .col(
                        ColumnDef::new(WorkerJoinTokens::TokenHash)
                            .string_len(64)
                            .not_null()
                            .unique_key(),
                    )
                    .col(time(WorkerJoinTokens::CreatedAt))
                    .col(time(WorkerJoinTokens::ExpiresAt))
                    .col(maybe_time(WorkerJoinTokens::UsedAt))
                    .col(
                        ColumnDef::new(WorkerJoinTokens::WorkerId)
                            .string_len(40)
                            .null(),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(Runs::Table)
                    .col(id(Runs::Id).primary_key())
                    .col(id(Runs::TenantId))
                    .col(ColumnDef::new(Runs::Spec).text().not_null())
                    .col(ColumnDef::new(Runs::Image).text().not_null())
                    .col(big(Runs::CpuMillis))
                    .col(big(Runs::MemoryMib))
                    .col(ColumnDef::new(Runs::State).string_len(16).not_null())
                    .col(ColumnDef::new(Runs::Reason).text().null())
                    .col(ColumnDef::new(Runs::Attempts).integer().not_null())
                    .col(ColumnDef::new(Runs::MaxAttempts).integer().not_null())
                    .col(big(Runs::Epoch))
                    .col(ColumnDef::new(Runs::WorkerId).string_len(40).null())
                    .col(ColumnDef::new(Runs::PlacedRound).big_integer().null())
                    .col(ColumnDef::new(Runs::ExitCode).integer().null())
                    .col(ColumnDef::new(Runs::Stdout).text().null())
                    .col(ColumnDef::new(Runs::Stderr).text().null())
                    .col(maybe_time(Runs::CancelRequestedAt))
                    .col(time(Runs::CreatedAt))
                    .col(maybe_time(Runs::PlacedAt))
                    .col(maybe_time(Runs::StartingAt))
                    .col(maybe_time(Runs::RunningAt))
                    .col(maybe_time(Runs::FinishedAt))
                    .col(maybe_time(Runs::LostAt))
                    .col(time(Runs::UpdatedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .from(Runs::Table, Runs::TenantId)
                            .to(Tenants::Table, Tenants::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        for (name, cols) in [
            ("idx_runs_state", vec![Runs::State, Runs::CreatedAt]),
            ("idx_runs_tenant", vec![Runs::TenantId, Runs::CreatedAt]),
            ("idx_runs_worker", vec![Runs::WorkerId, Runs::State]),
        ] {
            let mut index = Index::create();
            index.name(name).table(Runs::Table);
            for col in cols {
                index.col(col);
            }
            manager.create_index(index.to_owned()).await?;
        }
        manager
            .create_table(
                Table::create()
                    .table(SchedulerRounds::Table)
                    .col(
                        ColumnDef::new(SchedulerRounds::Id)
                            .integer()
                            .not_null()
                            .primary_key(),
                    )
                    .col(big(SchedulerRounds::Round))
                    .to_owned(),
            )
            .await?;
        manager
            .exec_stmt(
                Query::insert()
                    .into_table(SchedulerRounds::Table)
                    .columns([SchedulerRounds::Id, SchedulerRounds::Round])
                    .values_panic([1.into(), 0.into()])
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            SchedulerRounds::Table.into_iden(),
            Runs::Table.into_iden(),
            WorkerJoinTokens::Table.into_iden(),
            Workers::Table.into_iden(),
        ] {
            manager
                .drop_table(Table::drop().table(table).if_exists().to_owned())
                .await?;
        }
        Ok(())
    }
}
