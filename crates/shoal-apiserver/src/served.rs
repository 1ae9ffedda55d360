//! What the apiserver serves right now: the built-in kinds of `shoal-api`'s registry, the
//! custom resources of every Established CustomResourceDefinition (`crd.rs` keeps them), and
//! the discovery and OpenAPI documents rendered from both. The set is replaced whole, behind
//! an `Arc`, whenever a CRD changes, so a request sees one consistent version of it.

use std::sync::{Arc, PoisonError, RwLock};

use crate::api::registry::{ResourceType, resource_types};
use crate::{discovery, openapi};

/// One version of the served set.
pub struct Served {
    /// The store revision of the CRDs this set was made from.
    revision: u64,
    /// Built-in kinds first, then custom resources (storage version first per CRD).
    types: Vec<&'static ResourceType>,
    /// Custom resources whose CRD is being deleted: served, but no new objects.
    terminating: Vec<&'static ResourceType>,
    pub docs: discovery::Documents,
    pub openapi: openapi::Documents,
}

impl Served {
    fn build(
        revision: u64,
        custom: Vec<&'static ResourceType>,
        terminating: Vec<&'static ResourceType>,
    ) -> Served {
        let mut types: Vec<&'static ResourceType> = resource_types().to_vec();
        types.extend(custom);
        Served {
            revision,
            docs: discovery::Documents::build(&types),
            openapi: openapi::Documents::build(&types),
            types,
            terminating,
        }
    }

    /// Every served type, built-in first.
    pub fn types(&self) -> &[&'static ResourceType] {
        &self.types
    }

    /// Looks a type up by group, version and plural.
    pub fn find_by_plural(
        &self,
        group: &str,
        version: &str,
        plural: &str,
    ) -> Option<&'static ResourceType> {
        self.types
            .iter()
            .copied()
            .find(|r| r.group == group && r.version == version && r.plural == plural)
    }

    /// Whether `rt` is a custom resource whose CRD is being deleted.
    pub fn is_terminating(&self, rt: &ResourceType) -> bool {
        self.terminating.contains(&rt)
    }
}

/// The current served set, swapped whole.
pub struct Current(RwLock<Arc<Served>>);

impl Current {
    /// The built-in kinds alone.
    pub fn builtin() -> Current {
        Current(RwLock::new(Arc::new(Served::build(
            0,
            Vec::new(),
            Vec::new(),
        ))))
    }

    pub fn get(&self) -> Arc<Served> {
        Arc::clone(&self.0.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Stops serving the custom resources of `group`/`plural` (their CRD is about to be
    /// removed), until a later pass says otherwise.
    pub fn withdraw(&self, group: &str, plural: &str) {
        let mut current = self.0.write().unwrap_or_else(PoisonError::into_inner);
        let builtin = resource_types().len();
        let keep = |t: &&'static ResourceType| !(t.group == group && t.plural == plural);
        let custom: Vec<_> = current.types[builtin..]
            .iter()
            .copied()
            .filter(keep)
            .collect();
        let terminating: Vec<_> = current.terminating.iter().copied().filter(keep).collect();
        *current = Arc::new(Served::build(current.revision, custom, terminating));
    }

    /// Serves these custom resources, read from the CRDs at store revision `revision`, from
    /// now on, re-rendering the documents (a CRD update may have changed a schema inside the
    /// same registrations). A set read at an older revision than the current one is ignored,
    /// so two passes finishing out of order never step back.
    pub fn set_custom(
        &self,
        revision: u64,
        custom: Vec<&'static ResourceType>,
        terminating: Vec<&'static ResourceType>,
    ) {
        if self.get().revision > revision {
            return;
        }
        let next = Arc::new(Served::build(revision, custom, terminating));
        let mut current = self.0.write().unwrap_or_else(PoisonError::into_inner);
        if current.revision <= revision {
            *current = next;
        }
    }
}
