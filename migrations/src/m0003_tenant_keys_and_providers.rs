//! Tenant data keys (stored wrapped) and tenants' own model providers (with
//! their API keys sealed by the tenant's data key).

use sea_orm_migration::prelude::*;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m0003_tenant_keys_and_providers"
    }
}

#[derive(DeriveIden)]
enum Tenants {
    Table,
    Id,
}

#[derive(DeriveIden)]
enum TenantKeys {
    Table,
    TenantId,
    WrappedKey,
    WrappedBy,
    CreatedAt,
}

#[derive(DeriveIden)]
enum TenantProviders {
    Table,
    TenantId,
    Name,
    Kind,
    BaseUrl,
    Models,
    SealedApiKey,
    CreatedAt,
    UpdatedAt,
}

fn time<T: IntoIden>(name: T) -> ColumnDef {
    ColumnDef::new(name)
        .timestamp_with_time_zone()
        .not_null()
        .to_owned()
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(TenantKeys::Table)
                    .col(
                        ColumnDef::new(TenantKeys::TenantId)
                            .string_len(40)
                            .not_null()
                            .primary_key(),
                    )
                    .col(
                        ColumnDef::new(TenantKeys::WrappedKey)
                            .string_len(200)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(TenantKeys::WrappedBy)
                            .string_len(100)
                            .not_null(),
                    )
                    .col(time(TenantKeys::CreatedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .from(TenantKeys::Table, TenantKeys::TenantId)
                            .to(Tenants::Table, Tenants::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(TenantProviders::Table)
                    .col(
                        ColumnDef::new(TenantProviders::TenantId)
                            .string_len(40)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(TenantProviders::Name)
                            .string_len(40)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(TenantProviders::Kind)
                            .string_len(32)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(TenantProviders::BaseUrl)
                            .string_len(500)
                            .null(),
                    )
                    .col(ColumnDef::new(TenantProviders::Models).text().not_null())
                    .col(
                        ColumnDef::new(TenantProviders::SealedApiKey)
                            .text()
                            .not_null(),
                    )
                    .col(time(TenantProviders::CreatedAt))
                    .col(time(TenantProviders::UpdatedAt))
                    .primary_key(
                        Index::create()
                            .col(TenantProviders::TenantId)
                            .col(TenantProviders::Name),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .from(TenantProviders::Table, TenantProviders::TenantId)
                            .to(Tenants::Table, Tenants::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(
                Table::drop()
                    .table(TenantProviders::Table)
                    .if_exists()
                    .to_owned(),
            )
            .await?;
        manager
            .drop_table(
                Table::drop()
                    .table(TenantKeys::Table)
                    .if_exists()
                    .to_owned(),
            )
            .await
    }
}
