//! Audit records of the in-process engine: the check decisions it answered,
//! oldest first per mandate.
//!
//! Decisions are not events, so nothing rebuilds these: in process they are
//! the only record, kept as written, and a rebuild of the projection keeps
//! them. Over NATS the engine writes decisions to the audit stream instead
//! (`engine/audit.rs`), and this part stays empty.

use serde::{Deserialize, Serialize};

use crate::domain::{MandateId, TenantId};

use super::keys::{key, read_all, under_tenant, AUDIT};
use super::{Store, StoreError};

impl Store {
    /// Records a check decision (in-process engine).
    pub fn record_audit<T: Serialize>(
        &self,
        tenant: &TenantId,
        mandate: MandateId,
        record: &T,
    ) -> Result<(), StoreError> {
        let id = self.db.generate_id()?;
        let k = key(
            AUDIT,
            &[
                tenant.as_str().as_bytes(),
                mandate.to_string().as_bytes(),
                &id.to_be_bytes(),
            ],
        );
        self.audit.insert(
            k,
            serde_json::to_vec(record).expect("audit records serialize"),
        )?;
        Ok(())
    }

    /// Recorded decisions of a mandate, oldest first.
    pub fn audit_records<T: for<'de> Deserialize<'de>>(
        &self,
        tenant: &TenantId,
        mandate: MandateId,
    ) -> Result<Vec<T>, StoreError> {
        read_all(&self.audit, &under_tenant(AUDIT, tenant, mandate))
    }
}
