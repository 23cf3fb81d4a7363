//! Tenants, users, memberships, API keys and the append-only audit log.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, DbBackend};

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m0001_foundation"
    }
}

#[derive(DeriveIden)]
enum Tenants {
    Table,
    Id,
    Name,
    CreatedAt,
}

#[derive(DeriveIden)]
enum Users {
    Table,
    Id,
    Email,
    DisplayName,
    CreatedAt,
}

#[derive(DeriveIden)]
enum Memberships {
    Table,
    TenantId,
    UserId,
    Role,
    CreatedAt,
}

#[derive(DeriveIden)]
enum ApiKeys {
    Table,
    Id,
    TenantId,
    Name,
    Prefix,
    KeyHash,
    Scopes,
    Role,
    CreatedBy,
    CreatedAt,
    ExpiresAt,
    LastUsedAt,
    RevokedAt,
}

#[derive(DeriveIden)]
enum AuditEvents {
    Table,
    Id,
    TenantId,
    OccurredAt,
    Principal,
    Action,
    Outcome,
    Reason,
    Target,
    ClientIp,
    RequestId,
}

fn id_col<T: IntoIden>(name: T) -> ColumnDef {
    ColumnDef::new(name).string_len(40).not_null().to_owned()
}

fn time_col<T: IntoIden>(name: T) -> ColumnDef {
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
                    .table(Tenants::Table)
                    .col(id_col(Tenants::Id).primary_key())
                    .col(ColumnDef::new(Tenants::Name).string_len(100).not_null())
                    .col(time_col(Tenants::CreatedAt))
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(Users::Table)
                    .col(id_col(Users::Id).primary_key())
                    .col(
                        ColumnDef::new(Users::Email)
                            .string_len(254)
                            .not_null()
                            .unique_key(),
                    )
                    .col(ColumnDef::new(Users::DisplayName).string_len(200).null())
                    .col(time_col(Users::CreatedAt))
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(Memberships::Table)
                    .col(id_col(Memberships::TenantId))
                    .col(id_col(Memberships::UserId))
                    .col(ColumnDef::new(Memberships::Role).string_len(16).not_null())
                    .col(time_col(Memberships::CreatedAt))
                    .primary_key(
                        Index::create()
                            .col(Memberships::TenantId)
                            .col(Memberships::UserId),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .from(Memberships::Table, Memberships::TenantId)
                            .to(Tenants::Table, Tenants::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .from(Memberships::Table, Memberships::UserId)
                            .to(Users::Table, Users::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(ApiKeys::Table)
                    .col(id_col(ApiKeys::Id).primary_key())
                    .col(id_col(ApiKeys::TenantId))
                    .col(ColumnDef::new(ApiKeys::Name).string_len(100).not_null())
                    .col(ColumnDef::new(ApiKeys::Prefix).string_len(16).not_null())
                    .col(
                        ColumnDef::new(ApiKeys::KeyHash)
                            .string_len(64)
                            .not_null()
                            .unique_key(),
                    )
                    .col(ColumnDef::new(ApiKeys::Scopes).string_len(200).not_null())
                    .col(ColumnDef::new(ApiKeys::Role).string_len(16).not_null())
                    .col(
                        ColumnDef::new(ApiKeys::CreatedBy)
                            .string_len(100)
                            .not_null(),
                    )
                    .col(time_col(ApiKeys::CreatedAt))
                    .col(
                        ColumnDef::new(ApiKeys::ExpiresAt)
                            .timestamp_with_time_zone()
                            .null(),
                    )
                    .col(
                        ColumnDef::new(ApiKeys::LastUsedAt)
                            .timestamp_with_time_zone()
                            .null(),
                    )
                    .col(
                        ColumnDef::new(ApiKeys::RevokedAt)
                            .timestamp_with_time_zone()
                            .null(),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .from(ApiKeys::Table, ApiKeys::TenantId)
                            .to(Tenants::Table, Tenants::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_api_keys_tenant")
                    .table(ApiKeys::Table)
                    .col(ApiKeys::TenantId)
                    .col(ApiKeys::CreatedAt)
                    .to_owned(),
            )
            .await?;

        // The audit log keeps records of tenants that are later deleted, so
        // `tenant_id` is deliberately not a foreign key. A null tenant is a
        // platform-level record (e.g. an unknown API key).
        manager
            .create_table(
                Table::create()
                    .table(AuditEvents::Table)
                    .col(
                        ColumnDef::new(AuditEvents::Id)
                            .big_integer()
                            .not_null()
                            .auto_increment()
                            .primary_key(),
                    )
                    .col(ColumnDef::new(AuditEvents::TenantId).string_len(40).null())
                    .col(time_col(AuditEvents::OccurredAt))
                    .col(
                        ColumnDef::new(AuditEvents::Principal)
                            .string_len(100)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(AuditEvents::Action)
                            .string_len(64)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(AuditEvents::Outcome)
                            .string_len(16)
                            .not_null(),
                    )
                    .col(ColumnDef::new(AuditEvents::Reason).string_len(500).null())
                    .col(ColumnDef::new(AuditEvents::Target).string_len(200).null())
                    .col(ColumnDef::new(AuditEvents::ClientIp).string_len(64).null())
                    .col(ColumnDef::new(AuditEvents::RequestId).string_len(64).null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_audit_events_tenant")
                    .table(AuditEvents::Table)
                    .col(AuditEvents::TenantId)
                    .col(AuditEvents::Id)
                    .to_owned(),
            )
            .await?;

        forbid_audit_rewrites(manager).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        if manager.get_database_backend() == DbBackend::Postgres {
            db.execute_unprepared("DROP FUNCTION IF EXISTS carapace_audit_append_only() CASCADE")
                .await?;
        }
        for table in [
            AuditEvents::Table.into_iden(),
            ApiKeys::Table.into_iden(),
            Memberships::Table.into_iden(),
            Users::Table.into_iden(),
            Tenants::Table.into_iden(),
        ] {
            manager
                .drop_table(Table::drop().table(table).if_exists().to_owned())
                .await?;
        }
        Ok(())
    }
}

/// The audit log is append-only in the database itself, not only by
/// convention in our code: an UPDATE or DELETE on `audit_events` aborts.
async fn forbid_audit_rewrites(manager: &SchemaManager<'_>) -> Result<(), DbErr> {
    let db = manager.get_connection();
    match manager.get_database_backend() {
        DbBackend::Postgres => {
            db.execute_unprepared(
                "CREATE FUNCTION carapace_audit_append_only() RETURNS trigger \
                 LANGUAGE plpgsql AS $$ BEGIN \
                 RAISE EXCEPTION 'audit_events is append-only'; END $$",
            )
            .await?;
            db.execute_unprepared(
                "CREATE TRIGGER audit_events_append_only \
                 BEFORE UPDATE OR DELETE ON audit_events \
                 FOR EACH ROW EXECUTE FUNCTION carapace_audit_append_only()",
            )
            .await?;
        }
        DbBackend::Sqlite => {
            for op in ["UPDATE", "DELETE"] {
                db.execute_unprepared(&format!(
                    "CREATE TRIGGER audit_events_no_{} BEFORE {op} ON audit_events \
                     BEGIN SELECT RAISE(ABORT, 'audit_events is append-only'); END",
                    op.to_lowercase()
                ))
                .await?;
            }
        }
        DbBackend::MySql => {
            return Err(DbErr::Migration(
                "MySQL is not a supported Carapace database".to_owned(),
            ));
        }
    }
    Ok(())
}
