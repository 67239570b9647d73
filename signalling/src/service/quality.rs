//! The support desk's summary of how calls went: each media session's browser reports its
//! figures every few seconds (no media, no names: a role, the path, round trip, loss,
//! bitrates, freezes, concealed sound, time in sound only), kept per call for
//! [`protocol::CALL_QUALITY_KEPT_DAYS`] days; staff of the clinic and admins read them.

use protocol::{CallQualityView, ClinicId};

use super::{Service, now};
use crate::auth::{Action, StaffClaims, Target, authorize};
use crate::error::AppError;
use crate::store::QualityReport;

/// The most calls one read returns.
pub const CALL_QUALITY_LIMIT: usize = 200;

impl Service {
    /// Keeps a media session's latest report (the websocket checked that the session is
    /// the caller's own, in that consultation).
    pub async fn record_call_quality(&self, report: QualityReport) -> Result<(), AppError> {
        Ok(self.store.put_call_quality(&report).await?)
    }

    /// A clinic's calls of the last [`protocol::CALL_QUALITY_KEPT_DAYS`] days, newest
    /// first, for whoever may see its room.
    pub async fn call_quality(
        &self,
        claims: &StaffClaims,
        clinic: &ClinicId,
    ) -> Result<Vec<CallQualityView>, AppError> {
        authorize(claims, Action::ViewRoom, Some(clinic), Target::Clinic)?;
        if self.store.clinic(clinic).await?.is_none() {
            return Err(AppError::NotFound("no such clinic"));
        }
        let since = now().0.saturating_sub(crate::store::CALL_QUALITY_KEPT_MS);
        Ok(self
            .store
            .call_quality(clinic, protocol::Timestamp(since), CALL_QUALITY_LIMIT)
            .await?)
    }
}
