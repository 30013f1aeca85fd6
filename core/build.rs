//! The migrations are embedded by `sqlx::migrate!`: the crate is built again when one is added or changed.

fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
