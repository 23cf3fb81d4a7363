//! Sandboxes: a tenant's running containers, where they run and with what.

use sea_orm_migration::prelude::*;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m0008_sandboxes"
    }
}

#[derive(DeriveIden)]
enum Tenants {
    Table,
    Id,
}

#[derive(DeriveIden)]
enum Sandboxes {
    Table,
    Id,
    TenantId,
    Image,
    EgressAllow,
    Limits,
    State,
    Worker,
    CreatedAt,
    LastUsedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let text = |col: Sandboxes| ColumnDef::new(col).text().not_null().to_owned();
        let time = |col: Sandboxes| {
            ColumnDef::new(col)
                .timestamp_with_time_zone()
                .not_null()
                .to_owned()
        };
        manager
            .create_table(
                Table::create()
                    .table(Sandboxes::Table)
                    .col(
                        ColumnDef::new(Sandboxes::Id)
                            .string_len(40)
                            .not_null()
                            .primary_key(),
                    )
                    .col(
                        ColumnDef::new(Sandboxes::TenantId)
                            .string_len(40)
                            .not_null(),
                    )
                    .col(text(Sandboxes::Image))
                    .col(text(Sandboxes::EgressAllow))
                    .col(text(Sandboxes::Limits))
                    .col(ColumnDef::new(Sandboxes::State).string_len(16).not_null())
                    .col(text(Sandboxes::Worker))
                    .col(time(Sandboxes::CreatedAt))
                    .col(time(Sandboxes::LastUsedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .from(Sandboxes::Table, Sandboxes::TenantId)
                            .to(Tenants::Table, Tenants::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_sandboxes_tenant")
                    .table(Sandboxes::Table)
                    .col(Sandboxes::TenantId)
                    .col(Sandboxes::CreatedAt)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(Sandboxes::Table).if_exists().to_owned())
            .await
    }
}
