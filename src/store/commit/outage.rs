//! An instance's outage state written (`u/<instance>`): when an outage begins or ends.

use super::view::BatchView;
use super::{Committer, Operation};
use crate::store::error::Error;
use crate::store::keys;
use crate::store::outage::{OutageRecord, OutageV1};

/// Replaces an instance's outage state. Synced before it is answered, so that an outage seen
/// before a crash is still one after it.
pub(in crate::store) struct SetOutage {
    pub instance: String,
    pub outage: OutageV1,
}

impl Operation for SetOutage {
    type Reply = ();

    fn apply(self, _: &mut Committer, view: &mut BatchView<'_>) -> Result<(), Error> {
        view.insert(
            keys::outage(&self.instance),
            OutageRecord::encode(&self.outage),
        );
        Ok(())
    }
}
