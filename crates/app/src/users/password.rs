//! Password hashing with Argon2id (the `argon2` crate's defaults: OWASP's recommended parameters). Hashing
//! takes tens of milliseconds of CPU on purpose, so it runs on the blocking pool, never on the async workers.

use argon2::password_hash::{PasswordHasher as _, PasswordVerifier as _, SaltString, rand_core::OsRng};
use argon2::{Argon2, PasswordHash as ParsedHash};

use super::{Password, UserError};

/// A PHC-format Argon2id hash (`$argon2id$v=19$...`): safe to store, never shown (`Debug` hides it).
#[derive(Clone, PartialEq, Eq)]
pub struct PasswordHash(String);

impl std::fmt::Debug for PasswordHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PasswordHash(***)")
    }
}

impl PasswordHash {
    /// A hash as stored.
    pub fn from_stored(phc: String) -> Self {
        PasswordHash(phc)
    }

    /// The PHC string, for storage.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Hashes `password` with a fresh random salt.
    pub async fn of(password: &Password) -> Result<Self, UserError> {
        let password = password.clone();
        blocking(move || {
            let salt = SaltString::generate(&mut OsRng);
            Argon2::default()
                .hash_password(password.expose().as_bytes(), &salt)
                .map(|hash| PasswordHash(hash.to_string()))
                .map_err(|err| UserError::Internal(format!("cannot hash the password: {err}")))
        })
        .await
    }

    /// Whether `password` matches. A hash that does not parse matches nothing.
    pub async fn verify(&self, password: &Password) -> Result<bool, UserError> {
        let (hash, password) = (self.0.clone(), password.clone());
        blocking(move || {
            let Ok(parsed) = ParsedHash::new(&hash) else {
                tracing::error!("a stored password hash does not parse; the user cannot log in");
                return Ok(false);
            };
            Ok(Argon2::default().verify_password(password.expose().as_bytes(), &parsed).is_ok())
        })
        .await
    }

    /// A valid hash of a random password, verified against when the email is unknown so that a login for an
    /// unknown account takes as long as one with a wrong password (no user enumeration by timing).
    pub async fn decoy() -> &'static PasswordHash {
        static DECOY: tokio::sync::OnceCell<PasswordHash> = tokio::sync::OnceCell::const_new();
        DECOY
            .get_or_init(|| async {
                // A UUID is always an acceptable candidate; were it not, an empty hash also matches nothing.
                match Password::candidate(uuid::Uuid::new_v4().to_string()) {
                    Ok(random) => PasswordHash::of(&random).await.unwrap_or_else(|_| PasswordHash(String::new())),
                    Err(_) => PasswordHash(String::new()),
                }
            })
            .await
    }
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, UserError> + Send + 'static,
) -> Result<T, UserError> {
    tokio::task::spawn_blocking(work).await.map_err(|err| UserError::Internal(format!("hashing task failed: {err}")))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_hash_verifies_its_password_only() {
        let password = Password::parse("correct horse battery".into()).expect("valid");
        let hash = PasswordHash::of(&password).await.expect("hashes");
        assert!(hash.as_str().starts_with("$argon2id$"));
        assert!(hash.verify(&password).await.expect("verifies"));
        let wrong = Password::candidate("correct horse battery!".into()).expect("valid");
        assert!(!hash.verify(&wrong).await.expect("verifies"));
        assert!(!format!("{hash:?}").contains("argon2"));
    }

    #[tokio::test]
    async fn a_corrupt_hash_matches_nothing() {
        let password = Password::parse("correct horse battery".into()).expect("valid");
        assert!(!PasswordHash::from_stored("garbage".into()).verify(&password).await.expect("no error"));
    }
}
