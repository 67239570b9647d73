//! Typed identifiers. Slugs (clinics, staff, SFU nodes) are short human-readable names that
//! appear in links and on the command line; visits and consultations are random UUIDs so
//! that one cannot be guessed from another.

use std::fmt;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Why a string was refused as an identifier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdError {
    pub kind: &'static str,
    pub reason: &'static str,
}

impl fmt::Display for IdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid {}: {}", self.kind, self.reason)
    }
}

impl std::error::Error for IdError {}

/// The longest slug accepted.
pub const MAX_SLUG_LEN: usize = 64;

fn check_slug(kind: &'static str, s: &str) -> Result<(), IdError> {
    let err = |reason| Err(IdError { kind, reason });
    if s.is_empty() {
        return err("must not be empty");
    }
    if s.len() > MAX_SLUG_LEN {
        return err("must be at most 64 characters");
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.'))
    {
        return err("may contain only a-z, 0-9, '-', '_' and '.'");
    }
    if !s.as_bytes()[0].is_ascii_alphanumeric() {
        return err("must start with a letter or digit");
    }
    Ok(())
}

macro_rules! slug_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Checks the slug rules: 1 to 64 of `a-z 0-9 - _ .`, starting alphanumeric.
            pub fn parse(s: impl Into<String>) -> Result<Self, IdError> {
                let s = s.into();
                check_slug($kind, &s)?;
                Ok(Self(s))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(s: String) -> Result<Self, IdError> {
                Self::parse(s)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl std::str::FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::parse(s)
            }
        }
    };
}

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            /// A fresh random id.
            pub fn random() -> Self {
                Self(Uuid::new_v4())
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl std::str::FromStr for $name {
            type Err = uuid::Error;
            fn from_str(s: &str) -> Result<Self, uuid::Error> {
                Uuid::parse_str(s).map(Self)
            }
        }
    };
}

slug_id!(
    /// A clinic: one service with one waiting room, e.g. `dermatology-follow-up`.
    ClinicId,
    "clinic id"
);
slug_id!(
    /// A member of staff, by user name.
    StaffId,
    "user name"
);
slug_id!(
    /// One SFU node.
    NodeId,
    "node id"
);
uuid_id!(
    /// One patient's stay, from entering the waiting room until they leave.
    VisitId
);
uuid_id!(
    /// One call, hosted by one SFU node.
    ConsultationId
);
uuid_id!(
    /// One connected browser in a consultation.
    ParticipantId
);
uuid_id!(
    /// One personal invite link, kept by the server so it admits one patient and can be
    /// revoked.
    InviteId
);
uuid_id!(
    /// One staff sign-in, kept by the server so it can be ended.
    SessionId
);

/// Milliseconds since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Timestamp(pub u64);

impl Timestamp {
    pub fn saturating_add_ms(self, ms: u64) -> Self {
        Self(self.0.saturating_add(ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_are_checked() {
        assert!(ClinicId::parse("dermatology-follow-up").is_ok());
        assert!(ClinicId::parse("a").is_ok());
        for bad in ["", "Derm", "derm clinic", "-derm", "dérm", &"x".repeat(65)] {
            assert!(ClinicId::parse(bad).is_err(), "{bad:?} accepted");
        }
        let err = serde_json::from_str::<StaffId>("\"Bob Smith\"").unwrap_err();
        assert!(err.to_string().contains("user name"), "{err}");
    }

    #[test]
    fn uuid_ids_round_trip() {
        let v = VisitId::random();
        let s = serde_json::to_string(&v).unwrap();
        assert_eq!(serde_json::from_str::<VisitId>(&s).unwrap(), v);
        assert_eq!(v.to_string().parse::<VisitId>().unwrap(), v);
    }
}
