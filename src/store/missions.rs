//! Mission marks: missions known to be completed, whether or not a tree
//! serves them, so that a later issue for one is refused.
//!
//! Where they come from: an instance marks a mission when it completes it
//! (an administrator's command, or the intake's), and over NATS its marks
//! follower marks every accepted completion it reads on the mission stream.
//! That stream is their source over NATS: the follower reads it whole at
//! every start, so a lost or new marks tree is re-derived. In process there
//! is no mission stream: the mark of a completion that no tree recorded is
//! its only record. A rebuild of the projection keeps every mark.
//!
//! A mission a tree's event completed is also known from the projection (its
//! completed-missions index); [`Store::mission_completed`] reads both.

use crate::domain::{MissionRef, TenantId};

use super::keys::{of_tenant, COMPLETED};
use super::{Store, StoreError};

impl Store {
    /// Whether a mission was completed: marked, or completed by an event of
    /// one of its trees.
    pub fn mission_completed(
        &self,
        tenant: &TenantId,
        mission: &MissionRef,
    ) -> Result<bool, StoreError> {
        Ok(self.completed_by_a_tree(tenant, mission)?
            || self
                .marks
                .contains_key(of_tenant(COMPLETED, tenant, mission.as_str()))?)
    }

    /// Records a mission as completed even where no tree serves it yet, so a
    /// later issue for it is refused.
    pub fn mark_mission_completed(
        &self,
        tenant: &TenantId,
        mission: &MissionRef,
    ) -> Result<(), StoreError> {
        self.marks
            .insert(of_tenant(COMPLETED, tenant, mission.as_str()), &[])?;
        Ok(())
    }

    /// Withdraws a mark of [`Store::mark_mission_completed`] whose completion
    /// was refused or failed. A completion recorded by an event stays.
    pub fn unmark_mission_completed(
        &self,
        tenant: &TenantId,
        mission: &MissionRef,
    ) -> Result<(), StoreError> {
        self.marks
            .remove(of_tenant(COMPLETED, tenant, mission.as_str()))?;
        Ok(())
    }
}
