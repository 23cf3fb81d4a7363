//! Shared token buckets for the gateway's rate limits, so that every
//! control-plane replica draws from the same allowance.

use sea_orm_migration::prelude::*;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m0004_gateway_buckets"
    }
}

#[derive(DeriveIden)]
enum GatewayBuckets {
    Table,
    Name,
    Level,
    UpdatedMs,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(GatewayBuckets::Table)
                    .col(
                        ColumnDef::new(GatewayBuckets::Name)
                            .string_len(100)
                            .not_null()
                            .primary_key(),
                    )
                    .col(ColumnDef::new(GatewayBuckets::Level).double().not_null())
                    .col(
                        ColumnDef::new(GatewayBuckets::UpdatedMs)
                            .big_integer()
                            .not_null(),
                    )
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(
                Table::drop()
                    .table(GatewayBuckets::Table)
                    .if_exists()
                    .to_owned(),
            )
            .await
    }
}
