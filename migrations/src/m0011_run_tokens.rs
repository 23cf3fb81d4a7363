//! Run tokens: each placement of a run gets a credential of its own for the
//! model gateway; the run keeps only its SHA-256. Usage ledger rows name
//! the run a call was made by, when a run token made it.

use sea_orm_migration::prelude::*;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m0011_run_tokens"
    }
}

#[derive(DeriveIden)]
enum Runs {
    Table,
    TokenHash,
}

#[derive(DeriveIden)]
enum GatewayUsage {
    Table,
    RunId,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Runs::Table)
                    .add_column(ColumnDef::new(Runs::TokenHash).string_len(64).null())
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(GatewayUsage::Table)
                    .add_column(ColumnDef::new(GatewayUsage::RunId).string_len(40).null())
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(GatewayUsage::Table)
                    .drop_column(GatewayUsage::RunId)
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(Runs::Table)
                    .drop_column(Runs::TokenHash)
                    .to_owned(),
            )
            .await
    }
}
