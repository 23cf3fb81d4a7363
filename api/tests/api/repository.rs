//! Guarantees the database itself keeps, checked on the backend under test.

use sea_orm::ConnectionTrait;

use crate::helpers::spawn_app;

#[tokio::test]
async fn the_audit_log_cannot_be_rewritten_or_deleted() {
    let app = spawn_app().await;
    app.create_tenant("Acme").await;
    let update = app
        .db
        .execute_unprepared("UPDATE audit_events SET outcome = 'denied'")
        .await;
    assert!(update.is_err(), "UPDATE on audit_events must fail");
    assert!(format!("{:?}", update.unwrap_err()).contains("append-only"));
    let delete = app.db.execute_unprepared("DELETE FROM audit_events").await;
    assert!(delete.is_err(), "DELETE on audit_events must fail");
}

#[tokio::test]
async fn only_a_hash_of_each_key_is_stored() {
    let app = spawn_app().await;
    let acme = app.create_tenant("Acme").await;
    let rows = app
        .db
        .query_all(sea_orm::Statement::from_string(
            app.db.get_database_backend(),
            "SELECT prefix, key_hash FROM api_keys",
        ))
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    let hash: String = rows[0].try_get("", "key_hash").unwrap();
    let prefix: String = rows[0].try_get("", "prefix").unwrap();
    assert_eq!(hash.len(), 64);
    assert!(!hash.contains(&acme.key[4..]));
    assert!(acme.key.starts_with(&prefix));
    assert!(prefix.len() < 16);
}

#[tokio::test]
async fn migrations_are_idempotent() {
    let app = spawn_app().await;
    carapace_api::db::migrate(&app.db).await.unwrap();
    carapace_api::db::migrate(&app.db).await.unwrap();
}
