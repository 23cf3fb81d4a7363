//! Usage ledger rows name the agent a call was made for, when known.

use sea_orm_migration::prelude::*;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m0006_usage_agent"
    }
}

#[derive(DeriveIden)]
enum GatewayUsage {
    Table,
    AgentId,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(GatewayUsage::Table)
                    .add_column(ColumnDef::new(GatewayUsage::AgentId).string_len(40).null())
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(GatewayUsage::Table)
                    .drop_column(GatewayUsage::AgentId)
                    .to_owned(),
            )
            .await
    }
}
