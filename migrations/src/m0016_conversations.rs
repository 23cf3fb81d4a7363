//! Conversations with agents: an agent's settings for talking (tools,
//! limits, idle timeout; one JSON column), the sandbox that keeps an
//! agent warm (`sandboxes.agent_id`, `sandboxes.idle_timeout_s`), the
//! conversations, their messages (in order, with an optional idempotency
//! key) and their events (numbered per conversation from the
//! conversation's counter `events`, for resumable streams).

use sea_orm_migration::prelude::*;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m0016_conversations"
    }
}

#[derive(DeriveIden)]
enum Tenants {
    Table,
    Id,
}

#[derive(DeriveIden)]
enum Agents {
    Table,
    Settings,
}

#[derive(DeriveIden)]
enum Sandboxes {
    Table,
    AgentId,
    IdleTimeoutS,
}

#[derive(DeriveIden)]
enum Conversations {
    Table,
    Id,
    TenantId,
    AgentId,
    CreatedAt,
    UpdatedAt,
    BusyUntil,
    BusyBy,
    Events,
}

#[derive(DeriveIden)]
enum Messages {
    Table,
    Id,
    TenantId,
    ConversationId,
    Role,
    Text,
    Status,
    Error,
    ReplyId,
    IdempotencyKey,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum ConversationEvents {
    Table,
    ConversationId,
    Seq,
    TenantId,
    Kind,
    Data,
    CreatedAt,
}

fn id(col: impl IntoIden) -> ColumnDef {
    ColumnDef::new(col).string_len(40).not_null().to_owned()
}

fn owned_by_tenant(
    table: impl IntoIden + 'static,
    col: impl IntoIden + 'static,
) -> ForeignKeyCreateStatement {
    ForeignKey::create()
        .from(table, col)
        .to(Tenants::Table, Tenants::Id)
        .on_delete(ForeignKeyAction::Cascade)
        .to_owned()
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // One column per statement: SQLite alters one column at a time.
        manager
            .alter_table(
                Table::alter()
                    .table(Agents::Table)
                    .add_column(
                        ColumnDef::new(Agents::Settings)
                            .text()
                            .not_null()
                            .default("{}"),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(Sandboxes::Table)
                    .add_column(ColumnDef::new(Sandboxes::AgentId).string_len(40).null())
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(Sandboxes::Table)
                    .add_column(ColumnDef::new(Sandboxes::IdleTimeoutS).big_integer().null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(Conversations::Table)
                    .col(id(Conversations::Id).primary_key())
                    .col(id(Conversations::TenantId))
                    .col(id(Conversations::AgentId))
                    .col(
                        ColumnDef::new(Conversations::CreatedAt)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(Conversations::UpdatedAt)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(Conversations::BusyUntil)
                            .timestamp_with_time_zone()
                            .null(),
                    )
                    .col(ColumnDef::new(Conversations::BusyBy).string_len(40).null())
                    .col(
                        ColumnDef::new(Conversations::Events)
                            .big_integer()
                            .not_null()
                            .default(0),
                    )
                    .foreign_key(&mut owned_by_tenant(
                        Conversations::Table,
                        Conversations::TenantId,
                    ))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("conversations_by_tenant")
                    .table(Conversations::Table)
                    .col(Conversations::TenantId)
                    .col(Conversations::Id)
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(Messages::Table)
                    .col(id(Messages::Id).primary_key())
                    .col(id(Messages::TenantId))
                    .col(id(Messages::ConversationId))
                    .col(ColumnDef::new(Messages::Role).string_len(16).not_null())
                    .col(ColumnDef::new(Messages::Text).text().not_null())
                    .col(ColumnDef::new(Messages::Status).string_len(16).not_null())
                    .col(ColumnDef::new(Messages::Error).text().null())
                    .col(ColumnDef::new(Messages::ReplyId).string_len(40).null())
                    .col(
                        ColumnDef::new(Messages::IdempotencyKey)
                            .string_len(200)
                            .null(),
                    )
                    .col(
                        ColumnDef::new(Messages::CreatedAt)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(Messages::UpdatedAt)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .foreign_key(&mut owned_by_tenant(Messages::Table, Messages::TenantId))
                    .foreign_key(
                        ForeignKey::create()
                            .from(Messages::Table, Messages::ConversationId)
                            .to(Conversations::Table, Conversations::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("messages_by_conversation")
                    .table(Messages::Table)
                    .col(Messages::ConversationId)
                    .col(Messages::Id)
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("messages_idempotency")
                    .table(Messages::Table)
                    .col(Messages::TenantId)
                    .col(Messages::IdempotencyKey)
                    .unique()
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(ConversationEvents::Table)
                    .col(id(ConversationEvents::ConversationId))
                    .col(
                        ColumnDef::new(ConversationEvents::Seq)
                            .big_integer()
                            .not_null(),
                    )
                    .col(id(ConversationEvents::TenantId))
                    .col(
                        ColumnDef::new(ConversationEvents::Kind)
                            .string_len(32)
                            .not_null(),
                    )
                    .col(ColumnDef::new(ConversationEvents::Data).text().not_null())
                    .col(
                        ColumnDef::new(ConversationEvents::CreatedAt)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .primary_key(
                        Index::create()
                            .col(ConversationEvents::ConversationId)
                            .col(ConversationEvents::Seq),
                    )
                    .foreign_key(&mut owned_by_tenant(
                        ConversationEvents::Table,
                        ConversationEvents::TenantId,
                    ))
                    .foreign_key(
                        ForeignKey::create()
                            .from(
                                ConversationEvents::Table,
                                ConversationEvents::ConversationId,
                            )
                            .to(Conversations::Table, Conversations::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            ConversationEvents::Table.into_iden(),
            Messages::Table.into_iden(),
            Conversations::Table.into_iden(),
        ] {
            manager
                .drop_table(Table::drop().table(table).if_exists().to_owned())
                .await?;
        }
        for (table, col) in [
            (
                Sandboxes::Table.into_iden(),
                Sandboxes::IdleTimeoutS.into_iden(),
            ),
            (Sandboxes::Table.into_iden(), Sandboxes::AgentId.into_iden()),
            (Agents::Table.into_iden(), Agents::Settings.into_iden()),
        ] {
            manager
                .alter_table(Table::alter().table(table).drop_column(col).to_owned())
                .await?;
        }
        Ok(())
    }
}
