//! The gateway's opt-in record of prompts and completions: a tenant's
//! switch (`tenants.record_gateway_bodies`, off by default) and the
//! records, each sealed with the tenant's data key (`gateway_transcripts`,
//! base64 like the other sealed columns).

use sea_orm_migration::prelude::*;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m0012_gateway_transcripts"
    }
}

#[derive(DeriveIden)]
enum Tenants {
    Table,
    Id,
    RecordGatewayBodies,
}

#[derive(DeriveIden)]
enum GatewayTranscripts {
    Table,
    Id,
    TenantId,
    CreatedAt,
    RunId,
    AgentId,
    Model,
    Status,
    Sealed,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Tenants::Table)
                    .add_column(
                        ColumnDef::new(Tenants::RecordGatewayBodies)
                            .boolean()
                            .not_null()
                            .default(false),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(GatewayTranscripts::Table)
                    .col(
                        ColumnDef::new(GatewayTranscripts::Id)
                            .string_len(40)
                            .not_null()
                            .primary_key(),
                    )
                    .col(
                        ColumnDef::new(GatewayTranscripts::TenantId)
                            .string_len(40)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(GatewayTranscripts::CreatedAt)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(GatewayTranscripts::RunId)
                            .string_len(40)
                            .null(),
                    )
                    .col(
                        ColumnDef::new(GatewayTranscripts::AgentId)
                            .string_len(40)
                            .null(),
                    )
                    .col(
                        ColumnDef::new(GatewayTranscripts::Model)
                            .string_len(200)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(GatewayTranscripts::Status)
                            .integer()
                            .not_null(),
                    )
                    .col(ColumnDef::new(GatewayTranscripts::Sealed).text().not_null())
                    .foreign_key(
                        ForeignKey::create()
                            .from(GatewayTranscripts::Table, GatewayTranscripts::TenantId)
                            .to(Tenants::Table, Tenants::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("gateway_transcripts_by_tenant_time")
                    .table(GatewayTranscripts::Table)
                    .col(GatewayTranscripts::TenantId)
                    .col(GatewayTranscripts::Id)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(
                Table::drop()
                    .table(GatewayTranscripts::Table)
                    .if_exists()
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(Tenants::Table)
                    .drop_column(Tenants::RecordGatewayBodies)
                    .to_owned(),
            )
            .await
    }
}
