//! Sandboxes go through the scheduler: each is an interactive run, whose
//! id its record keeps.

use sea_orm_migration::prelude::*;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m0010_sandbox_runs"
    }
}

#[derive(DeriveIden)]
enum Sandboxes {
    Table,
    RunId,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Sandboxes::Table)
                    .add_column(ColumnDef::new(Sandboxes::RunId).string_len(40).null())
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Sandboxes::Table)
                    .drop_column(Sandboxes::RunId)
                    .to_owned(),
            )
            .await
    }
}
