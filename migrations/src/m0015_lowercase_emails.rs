//! Email addresses are compared lower-cased (a login finds the person an
//! invitation or the CLI named): stored ones are lower-cased too. An
//! address that would collide with another person's lower-cased one is
//! left as it is (the two people stay apart; an operator merges them).

use sea_orm_migration::prelude::*;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m0015_lowercase_emails"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(
                "UPDATE users SET email = LOWER(email) \
                 WHERE email <> LOWER(email) \
                 AND NOT EXISTS (SELECT 1 FROM users other WHERE other.email = LOWER(users.email))",
            )
            .await?;
        Ok(())
    }

    async fn down(&self, _manager: &SchemaManager) -> Result<(), DbErr> {
        // The original case is not kept: nothing to undo.
        Ok(())
    }
}
