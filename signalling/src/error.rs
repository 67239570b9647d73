//! One error type for everything a request can meet, mapped to an HTTP status and to a
//! protocol [`ErrorCode`]. Client mistakes carry a plain message for the person; internal
//! causes are logged where they happen and reach the client only as "internal".

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use protocol::{ErrorBody, ErrorCode};

use crate::auth::{AuthError, PasswordError};
use crate::room::RoomError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Room(#[from] RoomError),
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(&'static str),
    #[error("{0}")]
    AlreadyExists(&'static str),
    #[error("the user name or password is wrong")]
    WrongCredentials,
    #[error("this clinic only accepts patients with a personal invite link")]
    ClinicClosed,
    #[error("this invite link is not valid; ask the clinic for a new one")]
    InviteInvalid,
    #[error("this invite link has expired; ask the clinic for a new one")]
    InviteExpired,
    #[error(
        "someone has already joined with this invite link; if that was you, go back to the \
         browser where you joined, otherwise ask the clinic for a link of your own"
    )]
    InviteUsed,
    #[error("the clinic has withdrawn this invite link; ask them for a new one")]
    InviteRevoked,
    #[error("your sign-in has ended; please sign in again")]
    SessionEnded,
    #[error("this visit has ended")]
    VisitEnded,
    #[error("too many people changed this waiting room at once; please try again")]
    Conflict,
    /// Too many attempts, or the server is busy checking passwords: try again later.
    #[error("{0}")]
    RateLimited(String),
    /// A media server could not be reached or did not answer.
    #[error("{0}")]
    Unavailable(String),
    /// A media server refused a request, with its reason.
    #[error("{1}")]
    Media(ErrorCode, String),
}

impl From<PasswordError> for AppError {
    fn from(e: PasswordError) -> Self {
        AppError::Invalid(e.to_string())
    }
}

impl AppError {
    pub fn code(&self) -> ErrorCode {
        match self {
            AppError::Room(e) => match e {
                RoomError::VisitNotFound | RoomError::ConsultationNotFound => ErrorCode::NotFound,
                RoomError::AlreadyAdmitted => ErrorCode::AlreadyAdmitted,
                RoomError::NotWaiting => ErrorCode::NotWaiting,
                RoomError::NotInConsultation => ErrorCode::NotInConsultation,
                RoomError::QueueEmpty => ErrorCode::QueueEmpty,
                RoomError::OtherClinician | RoomError::SameClinic => ErrorCode::InvalidInput,
            },
            AppError::Auth(AuthError::Invalid) => ErrorCode::Unauthenticated,
            AppError::Auth(AuthError::Expired) => ErrorCode::TokenExpired,
            AppError::Auth(AuthError::Forbidden) => ErrorCode::Forbidden,
            AppError::Store(StoreError::Conflict | StoreError::InviteTaken)
            | AppError::Conflict => ErrorCode::Conflict,
            AppError::InviteUsed => ErrorCode::InviteUsed,
            AppError::InviteRevoked => ErrorCode::InviteRevoked,
            AppError::SessionEnded => ErrorCode::SessionEnded,
            AppError::RateLimited(_) => ErrorCode::RateLimited,
            AppError::Store(StoreError::Unavailable(_)) => ErrorCode::Unavailable,
            AppError::Store(StoreError::Corrupt(_)) => ErrorCode::Internal,
            AppError::Invalid(_) => ErrorCode::InvalidInput,
            AppError::NotFound(_) => ErrorCode::NotFound,
            AppError::AlreadyExists(_) => ErrorCode::AlreadyExists,
            AppError::WrongCredentials => ErrorCode::WrongCredentials,
            AppError::ClinicClosed => ErrorCode::ClinicClosed,
            AppError::InviteInvalid => ErrorCode::InviteInvalid,
            AppError::InviteExpired => ErrorCode::InviteExpired,
            AppError::VisitEnded => ErrorCode::VisitEnded,
            AppError::Unavailable(_) => ErrorCode::Unavailable,
            AppError::Media(code, _) => *code,
        }
    }

    pub fn status(&self) -> StatusCode {
        status_of(self.code())
    }

    /// What the person is told. Internal causes stay in the log.
    pub fn public_message(&self) -> String {
        match self {
            AppError::Store(StoreError::Unavailable(_)) => {
                "the service is temporarily unavailable; please try again shortly".into()
            }
            AppError::Store(StoreError::Corrupt(_)) => "something went wrong on our side".into(),
            AppError::Unavailable(_) | AppError::Media(ErrorCode::Internal, _) => {
                "the video service is temporarily unavailable; please try again shortly".into()
            }
            other => other.to_string(),
        }
    }

    /// Logs internal causes (client mistakes are not errors of ours).
    pub fn log(&self) {
        match self {
            AppError::Store(StoreError::Unavailable(e)) => {
                tracing::warn!(error = %e, "store unavailable")
            }
            AppError::Store(StoreError::Corrupt(e)) => {
                tracing::error!(error = %e, "corrupt stored data")
            }
            AppError::Unavailable(e) => tracing::warn!(error = %e, "media unavailable"),
            AppError::Media(ErrorCode::Internal, e) => {
                tracing::error!(error = %e, "media server failed")
            }
            _ => tracing::debug!(error = %self, "request refused"),
        }
    }

    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            code: self.code(),
            message: self.public_message(),
        }
    }
}

pub fn status_of(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::BadRequest | ErrorCode::UnknownMessage | ErrorCode::InvalidInput => {
            StatusCode::BAD_REQUEST
        }
        ErrorCode::MessageTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::RateLimited | ErrorCode::TooManyConnections => StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::Unauthenticated | ErrorCode::TokenExpired | ErrorCode::WrongCredentials => {
            StatusCode::UNAUTHORIZED
        }
        ErrorCode::Forbidden | ErrorCode::ClinicClosed => StatusCode::FORBIDDEN,
        ErrorCode::NotFound => StatusCode::NOT_FOUND,
        ErrorCode::AlreadyExists
        | ErrorCode::AlreadyAdmitted
        | ErrorCode::NotWaiting
        | ErrorCode::NotInConsultation
        | ErrorCode::QueueEmpty
        | ErrorCode::Conflict => StatusCode::CONFLICT,
        ErrorCode::VisitEnded | ErrorCode::InviteExpired | ErrorCode::InviteRevoked => {
            StatusCode::GONE
        }
        ErrorCode::InviteUsed => StatusCode::CONFLICT,
        ErrorCode::SessionEnded => StatusCode::UNAUTHORIZED,
        ErrorCode::InviteInvalid => StatusCode::UNAUTHORIZED,
        ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        self.log();
        (self.status(), Json(self.body())).into_response()
    }
}
