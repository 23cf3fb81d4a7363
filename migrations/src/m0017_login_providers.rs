//! Several identity providers at once: a pending login and a session
//! remember which provider (by its configured name) they belong to.
//! Rows from before name the provider `default`, the name the
//! `CARAPACE_OIDC_*` provider keeps.

use sea_orm_migration::prelude::*;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m0017_login_providers"
    }
}

#[derive(DeriveIden)]
enum LoginAttempts {
    Table,
    Provider,
}

#[derive(DeriveIden)]
enum Sessions {
    Table,
    Provider,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // One column per statement: SQLite alters one column at a time.
        manager
            .alter_table(
                Table::alter()
                    .table(LoginAttempts::Table)
                    .add_column(
                        ColumnDef::new(LoginAttempts::Provider)
                            .string_len(32)
                            .not_null()
                            .default("default"),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(Sessions::Table)
                    .add_column(
                        ColumnDef::new(Sessions::Provider)
                            .string_len(32)
                            .not_null()
                            .default("default"),
                    )
                    .to_owned(),
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Sessions::Table)
                    .drop_column(Sessions::Provider)
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(LoginAttempts::Table)
                    .drop_column(LoginAttempts::Provider)
                    .to_owned(),
            )
            .await?;
        Ok(())
    }
}
