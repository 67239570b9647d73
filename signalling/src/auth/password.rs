//! Staff passwords: argon2id with the crate's recommended parameters, stored as PHC strings.

use argon2::password_hash::{
    Output, PasswordHash, PasswordHasher, PasswordVerifier, SaltString, rand_core::OsRng,
};
use argon2::{Algorithm, Argon2, Block, Params, Version};

/// The shortest password accepted for staff, in characters.
pub const MIN_PASSWORD_CHARS: usize = 10;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PasswordError {
    #[error("a password must be at least {MIN_PASSWORD_CHARS} characters")]
    TooShort,
    #[error("a password must be at most 1024 bytes")]
    TooLong,
    #[error("could not hash the password: {0}")]
    Hash(String),
}

pub fn hash_password(password: &str) -> Result<String, PasswordError> {
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return Err(PasswordError::TooShort);
    }
    if password.len() > 1024 {
        return Err(PasswordError::TooLong);
    }
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| PasswordError::Hash(e.to_string()))
}

/// Whether `password` matches the stored `hash`. A malformed hash matches nothing.
pub fn verify_password(password: &str, hash: &str) -> bool {
    if password.len() > 1024 {
        return false;
    }
    PasswordHash::new(hash).is_ok_and(|h| {
        Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok()
    })
}

/// The most argon2 memory a stored hash may ask a check for: four times the parameters
/// this module hashes with (19 MiB).
const MAX_BLOCKS: usize = 4 * 19 * 1024;

/// Argon2 memory that one thread keeps for all its checks. Kept, not freed: glibc raises
/// its mmap threshold for good the first time a block this large is freed, after which a
/// flood of connections' buffers stays in the heap (a sign-in flood measured +294 MiB
/// with a free per check, +49 MiB without).
#[derive(Debug, Default)]
pub struct Scratch(Vec<Block>);

/// As [`verify_password`], in `scratch`'s memory (grown once, never freed).
pub fn verify_password_in(password: &str, hash: &str, scratch: &mut Scratch) -> bool {
    if password.len() > 1024 {
        return false;
    }
    let Ok(h) = PasswordHash::new(hash) else {
        return false;
    };
    let (Ok(algorithm), Ok(params)) = (Algorithm::try_from(h.algorithm), Params::try_from(&h))
    else {
        return false;
    };
    let version = match h.version.map(Version::try_from) {
        None => Version::default(),
        Some(Ok(v)) => v,
        Some(Err(_)) => return false,
    };
    let (Some(salt), Some(expected)) = (h.salt, h.hash) else {
        return false;
    };
    let mut salt_bytes = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_bytes) else {
        return false;
    };
    let blocks = params.block_count();
    if blocks > MAX_BLOCKS {
        return false;
    }
    if scratch.0.len() < blocks {
        scratch.0.resize(blocks, Block::default());
    }
    let argon2 = Argon2::new(algorithm, version, params);
    // `Output`'s comparison takes the same time wherever the bytes differ.
    Output::init_with(expected.len(), |out| {
        argon2
            .hash_password_into_with_memory(
                password.as_bytes(),
                salt,
                out,
                &mut scratch.0[..blocks],
            )
            .map_err(|_| argon2::password_hash::Error::Password)
    })
    .is_ok_and(|computed| computed == expected)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_verify_and_nothing_else_does() {
        let h = hash_password("correct horse battery").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password("correct horse battery", &h));
        assert!(!verify_password("correct horse battery!", &h));
        assert!(!verify_password("correct horse battery", "not a hash"));
        assert_ne!(h, hash_password("correct horse battery").unwrap(), "salted");
        assert_eq!(hash_password("short"), Err(PasswordError::TooShort));
    }

    #[test]
    fn checks_in_kept_memory_agree_with_the_crates_own() {
        let mut scratch = Scratch::default();
        let h = hash_password("correct horse battery").unwrap();
        for (password, hash) in [
            ("correct horse battery", h.as_str()),
            ("correct horse battery!", h.as_str()),
            ("correct horse battery", "not a hash"),
            (
                "correct horse battery",
                "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$yGrtf3mNHFq1dd+uD9KCeHBnmaDt/Qm7xWF2ZmSW1S8",
            ),
        ] {
            assert_eq!(
                verify_password_in(password, hash, &mut scratch),
                verify_password(password, hash),
                "{password} against {hash}"
            );
        }
        assert!(verify_password_in(
            "correct horse battery",
            &h,
            &mut scratch
        ));
        assert_eq!(
            scratch.0.len(),
            19 * 1024,
            "the memory is kept for the next check"
        );
    }
}
