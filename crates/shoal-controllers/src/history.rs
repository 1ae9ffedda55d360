//! ControllerRevisions: the pod-template history of StatefulSets and DaemonSets
//! (kube-controller-manager's `controller/history`).
//!
//! A revision stores its owner's template as upstream's patch shape,
//! `{"spec":{"template":{..., "$patch":"replace"}}}`, is named `<owner>-<hash>`, carries the
//! template's labels plus `controller-revision-hash`, and holds a number that grows with each
//! template the owner has run. Going back to an earlier template (`kubectl rollout undo`)
//! gives that template's revision the next number instead of writing a copy. Pods carry the
//! hash of the revision they were made from in the `controller-revision-hash` label.
//!
//! [`step`] and [`prune`] are the decisions as plain functions; [`sync`] carries them out.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::runtime::RawExtension;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::reflector::Store;
use serde_json::{Value, json};
use tracing::info;

use crate::Error;
use crate::pods::{controller_of, controller_ref};

/// The label naming the revision a pod (or a revision) was made from.
pub const CONTROLLER_REVISION_HASH: &str = "controller-revision-hash";

/// Owner names are cut to this many bytes in revision names (upstream's limit, leaving room
/// for the hash within 253).
const MAX_PREFIX: usize = 223;

/// A stable short lowercase alphanumeric hash of `bytes` (plus the collision count, if any):
/// FNV-1a (32 bit), its decimal digits spelled in Kubernetes' safe alphabet.
pub fn hash_bytes(bytes: &[u8], collision_count: Option<i32>) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut hash: u32 = 0x811c_9dc5;
    let mut feed = |bytes: &[u8]| {
        for b in bytes {
            hash ^= u32::from(*b);
            hash = hash.wrapping_mul(0x0100_0193);
        }
    };
    feed(bytes);
    if let Some(count) = collision_count {
        feed(&count.to_le_bytes());
    }
    hash.to_string()
        .bytes()
        .map(|d| char::from(ALPHABET[usize::from(d) % ALPHABET.len()]))
        .collect()
}

/// What a revision stores for `template`.
pub fn data_of(template: &PodTemplateSpec) -> Value {
    let mut template = serde_json::to_value(template).unwrap_or_else(|_| json!({}));
    if let Some(t) = template.as_object_mut() {
        t.insert("$patch".into(), json!("replace"));
    }
    json!({"spec": {"template": template}})
}

/// The template a revision stores (`None` for data of another shape).
pub fn template_of(revision: &ControllerRevision) -> Option<PodTemplateSpec> {
    let mut template = revision.data.as_ref()?.0.pointer("/spec/template")?.clone();
    template.as_object_mut()?.remove("$patch");
    serde_json::from_value(template).ok()
}

/// The hash of `template` under `collision_count`.
pub fn hash_of(template: &PodTemplateSpec, collision_count: Option<i32>) -> String {
    hash_bytes(
        &serde_json::to_vec(&data_of(template)).unwrap_or_default(),
        collision_count,
    )
}

/// The name of the revision of `owner` with `hash`.
pub fn revision_name(owner: &str, hash: &str) -> String {
    let mut cut = owner.len().min(MAX_PREFIX);
    while !owner.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}-{hash}", &owner[..cut])
}

/// The revisions `owner_uid` controls, oldest number first (name breaks ties).
pub fn owned<'a>(
    revisions: impl IntoIterator<Item = &'a ControllerRevision>,
    owner_uid: &str,
) -> Vec<&'a ControllerRevision> {
    let mut out: Vec<&ControllerRevision> = revisions
        .into_iter()
        .filter(|r| controller_of(&r.metadata).is_some_and(|o| o.uid == owner_uid))
        .collect();
    out.sort_by(|a, b| (a.revision, &a.metadata.name).cmp(&(b.revision, &b.metadata.name)));
    out
}

/// Adopts the revisions of `namespace` that have no controller and whose labels `selector`
/// matches (upstream's `ClaimControllerRevisions`: the revisions left behind by an owner
/// deleted with `--cascade=orphan` belong to the one that replaces it). Returns whether any
/// was adopted; the store shows them owned on a later pass.
async fn adopt_orphans(
    client: &kube::Client,
    namespace: &str,
    revisions: &[&ControllerRevision],
    selector: &k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector,
    owner: &k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference,
) -> Result<bool, Error> {
    let Some(selector) = shoal_api::selector::LabelSelector::from_api(selector)
        .ok()
        .filter(|s| !s.is_empty())
    else {
        return Ok(false);
    };
    let no_labels = BTreeMap::new();
    let api: Api<ControllerRevision> = Api::namespaced(client.clone(), namespace);
    let mut adopted = false;
    for revision in revisions.iter().filter(|r| {
        r.metadata.namespace.as_deref() == Some(namespace)
            && r.metadata.deletion_timestamp.is_none()
            && controller_of(&r.metadata).is_none()
            && selector.matches(r.metadata.labels.as_ref().unwrap_or(&no_labels))
    }) {
        let mut refs = revision
            .metadata
            .owner_references
            .clone()
            .unwrap_or_default();
        refs.push(owner.clone());
        let name = revision.metadata.name.as_deref().unwrap_or_default();
        let patch = json!({"metadata": {"ownerReferences": refs,
            "resourceVersion": revision.metadata.resource_version}});
        match api
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {
                info!(revision = %name, owner = %owner.name, "adopted revision");
                adopted = true;
            }
            // Changed or gone meanwhile: the next pass looks again.
            Err(kube::Error::Api(s)) if matches!(s.code, 404 | 409) => adopted = true,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(adopted)
}

/// An owner's history once [`sync_owner`] has run.
pub struct History {
    /// The revisions of the owner's namespace, from the store.
    revisions: Vec<Arc<ControllerRevision>>,
    uid: String,
    /// The revision holding the owner's template now.
    pub update: ControllerRevision,
}

impl History {
    /// The revisions the owner controls, oldest first (see [`owned`]).
    pub fn owned(&self) -> Vec<&ControllerRevision> {
        owned(self.revisions.iter().map(AsRef::as_ref), &self.uid)
    }
}

/// What a StatefulSet or DaemonSet does with its history each pass: adopt the orphaned
/// revisions its `selector` matches ([`adopt_orphans`]), then make sure its template has the
/// newest revision ([`ensure`]). `None` when the pass should look again shortly (revisions
/// were just adopted, or a hash collision was counted).
pub async fn sync_owner<K>(
    client: &kube::Client,
    store: &Store<ControllerRevision>,
    owners: &Api<K>,
    owner: &Owner<'_>,
    selector: &k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector,
    template: &PodTemplateSpec,
) -> Result<Option<History>, Error>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let namespace = owner.meta.namespace.as_deref().unwrap_or_default();
    let revisions = store.state_filter(|r| r.metadata.namespace.as_deref() == Some(namespace));
    let refs: Vec<&ControllerRevision> = revisions.iter().map(AsRef::as_ref).collect();
    let controller = controller_ref(owner.api_version, owner.kind, owner.meta);
    if adopt_orphans(client, namespace, &refs, selector, &controller).await? {
        return Ok(None);
    }
    let mine = owned(refs.iter().copied(), &controller.uid);
    let Some(update) = ensure(client, owners, owner, template, &mine).await? else {
        return Ok(None);
    };
    Ok(Some(History {
        revisions,
        uid: controller.uid,
        update,
    }))
}

/// What to do so that the owner's current template has the newest revision.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// The newest revision already holds the template.
    Current(ControllerRevision),
    /// An older revision holds it (a rollback): give it the next number.
    Renumber(ControllerRevision, i64),
    /// No revision holds it: create this one.
    Create(ControllerRevision),
}

impl Step {
    /// The revision that will hold the template.
    pub fn revision(&self) -> &ControllerRevision {
        match self {
            Step::Current(r) | Step::Renumber(r, _) | Step::Create(r) => r,
        }
    }
}

/// The owner's identity for [`step`].
pub struct Owner<'a> {
    /// `apps/v1`.
    pub api_version: &'a str,
    /// `StatefulSet` or `DaemonSet`.
    pub kind: &'a str,
    /// Its metadata (name, namespace, uid).
    pub meta: &'a ObjectMeta,
    /// `status.collisionCount`.
    pub collision_count: Option<i32>,
}

/// Upstream's revision bookkeeping: find the revision equal to `template` among `owned`
/// (sorted by [`owned`]) or make a new one numbered after the newest.
pub fn step(owner: &Owner<'_>, template: &PodTemplateSpec, owned: &[&ControllerRevision]) -> Step {
    let newest = owned.last().map_or(0, |r| r.revision);
    // The newest equal one (several can exist after a hash collision was resolved).
    if let Some(equal) = owned
        .iter()
        .rev()
        .find(|r| template_of(r).as_ref() == Some(template))
    {
        return if equal.revision == newest {
            Step::Current((*equal).clone())
        } else {
            Step::Renumber((*equal).clone(), newest + 1)
        };
    }
    let hash = hash_of(template, owner.collision_count);
    let mut labels: BTreeMap<String, String> = template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    labels.insert(CONTROLLER_REVISION_HASH.into(), hash.clone());
    Step::Create(ControllerRevision {
        metadata: ObjectMeta {
            name: Some(revision_name(
                owner.meta.name.as_deref().unwrap_or_default(),
                &hash,
            )),
            namespace: owner.meta.namespace.clone(),
            labels: Some(labels),
            // The owner's annotations, as upstream (`kubectl rollout history` shows the
            // revision's `kubernetes.io/change-cause`).
            annotations: owner.meta.annotations.clone(),
            owner_references: Some(vec![controller_ref(
                owner.api_version,
                owner.kind,
                owner.meta,
            )]),
            ..ObjectMeta::default()
        },
        data: Some(RawExtension(data_of(template))),
        revision: newest + 1,
    })
}

/// The revisions to delete so that at most `limit` revisions remain besides those in
/// `live` (names of the current and update revisions and of revisions pods still run):
/// the oldest go first.
pub fn prune<'a>(
    owned: &[&'a ControllerRevision],
    live: &HashSet<&str>,
    limit: i32,
) -> Vec<&'a ControllerRevision> {
    let idle: Vec<&ControllerRevision> = owned
        .iter()
        .copied()
        .filter(|r| !live.contains(r.metadata.name.as_deref().unwrap_or_default()))
        .collect();
    let keep = usize::try_from(limit.max(0)).unwrap_or(0);
    let surplus = idle.len().saturating_sub(keep);
    idle.into_iter().take(surplus).collect()
}

/// The result of [`sync`].
enum Synced {
    /// The revision that holds the template now.
    Revision(Box<ControllerRevision>),
    /// A revision of another template holds the name: bump `status.collisionCount` and
    /// try again.
    Collision,
}

/// Makes sure the owner's template has the newest revision ([`step`], then create or
/// renumber) and returns that revision; `None` after a hash collision, once the owner's
/// `status.collisionCount` (through `owners`) is one higher: the caller tries again.
async fn ensure<K>(
    client: &kube::Client,
    owners: &Api<K>,
    owner: &Owner<'_>,
    template: &PodTemplateSpec,
    owned: &[&ControllerRevision],
) -> Result<Option<ControllerRevision>, Error>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let namespace = owner.meta.namespace.as_deref().unwrap_or_default();
    match sync(client, namespace, step(owner, template, owned), template).await? {
        Synced::Revision(revision) => Ok(Some(*revision)),
        Synced::Collision => {
            let count = owner.collision_count.unwrap_or(0).saturating_add(1);
            let patch = json!({"status": {"collisionCount": count}});
            let name = owner.meta.name.as_deref().unwrap_or_default();
            owners
                .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
            Ok(None)
        }
    }
}

/// Carries out [`step`]: creates or renumbers the revision.
async fn sync(
    client: &kube::Client,
    namespace: &str,
    step: Step,
    template: &PodTemplateSpec,
) -> Result<Synced, Error> {
    let api: Api<ControllerRevision> = Api::namespaced(client.clone(), namespace);
    match step {
        Step::Current(revision) => Ok(Synced::Revision(Box::new(revision))),
        Step::Renumber(revision, number) => {
            let name = revision.metadata.name.clone().unwrap_or_default();
            let patch = json!({"metadata": {"resourceVersion": revision.metadata.resource_version},
                "revision": number});
            let updated = api
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
            info!(revision = %name, number, "renumbered revision");
            Ok(Synced::Revision(Box::new(updated)))
        }
        Step::Create(revision) => {
            let name = revision.metadata.name.clone().unwrap_or_default();
            match api.create(&PostParams::default(), &revision).await {
                Ok(created) => {
                    info!(revision = %name, number = created.revision, "created revision");
                    Ok(Synced::Revision(Box::new(created)))
                }
                Err(kube::Error::Api(s)) if s.code == 409 => {
                    // Ours and equal (our cache had not seen it yet), or a collision.
                    let existing = api.get(&name).await?;
                    let ours = controller_of(&existing.metadata).map(|o| o.uid.as_str())
                        == revision
                            .metadata
                            .owner_references
                            .as_ref()
                            .and_then(|r| r.first())
                            .map(|o| o.uid.as_str());
                    if ours && template_of(&existing).as_ref() == Some(template) {
                        Ok(Synced::Revision(Box::new(existing)))
                    } else {
                        Ok(Synced::Collision)
                    }
                }
                Err(e) => Err(e.into()),
            }
        }
    }
}

/// Deletes what [`prune`] picks (`limit`: `revisionHistoryLimit`, 10 when unset), each
/// uid-guarded; already gone is fine.
pub async fn trim(
    client: &kube::Client,
    namespace: &str,
    owned: &[&ControllerRevision],
    live: &HashSet<&str>,
    limit: Option<i32>,
) -> Result<(), Error> {
    let api: Api<ControllerRevision> = Api::namespaced(client.clone(), namespace);
    for revision in prune(owned, live, limit.unwrap_or(10)) {
        let name = revision.metadata.name.as_deref().unwrap_or_default();
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: revision.metadata.uid.clone(),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match api.delete(name, &params).await {
            Ok(_) => info!(revision = %name, "deleted old revision"),
            Err(kube::Error::Api(s)) if matches!(s.code, 404 | 409) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(image: &str) -> PodTemplateSpec {
        serde_json::from_value(json!({"metadata": {"labels": {"app": "a"}},
            "spec": {"containers": [{"name": "c", "image": image}]}}))
        .expect("template")
    }

    fn meta() -> ObjectMeta {
        ObjectMeta {
            name: Some("web".into()),
            namespace: Some("ns".into()),
            uid: Some("u1".into()),
            ..ObjectMeta::default()
        }
    }

    fn owner(meta: &ObjectMeta) -> Owner<'_> {
        Owner {
            api_version: "apps/v1",
            kind: "DaemonSet",
            meta,
            collision_count: None,
        }
    }

    #[test]
    fn creates_then_finds_then_renumbers_on_rollback() {
        let meta = meta();
        let v1 = step(&owner(&meta), &template("a:1"), &[]);
        let Step::Create(r1) = v1 else {
            panic!("{v1:?}")
        };
        assert_eq!(r1.revision, 1);
        let hash = hash_of(&template("a:1"), None);
        assert_eq!(
            r1.metadata.name.as_deref(),
            Some(format!("web-{hash}").as_str())
        );
        assert_eq!(
            r1.metadata.labels.as_ref().expect("labels")[CONTROLLER_REVISION_HASH],
            hash
        );
        assert_eq!(template_of(&r1), Some(template("a:1")));
        assert_eq!(
            step(&owner(&meta), &template("a:1"), &[&r1]),
            Step::Current(r1.clone())
        );
        let Step::Create(r2) = step(&owner(&meta), &template("a:2"), &[&r1]) else {
            panic!("create")
        };
        assert_eq!(r2.revision, 2);
        assert_eq!(
            step(&owner(&meta), &template("a:1"), &[&r1, &r2]),
            Step::Renumber(r1.clone(), 3)
        );
        let mut collided = owner(&meta);
        collided.collision_count = Some(1);
        let Step::Create(r3) = step(&collided, &template("a:3"), &[&r1, &r2]) else {
            panic!("create")
        };
        assert_ne!(
            r3.metadata.name,
            revision_name("web", &hash_of(&template("a:3"), None)).into()
        );
    }

    #[test]
    fn owned_sorts_and_filters_by_controller() {
        let meta = meta();
        let Step::Create(mut a) = step(&owner(&meta), &template("a:1"), &[]) else {
            panic!()
        };
        let mut b = a.clone();
        a.revision = 5;
        b.revision = 2;
        let mut other = a.clone();
        other.metadata.owner_references = None;
        let list = [a.clone(), other, b.clone()];
        let sorted = owned(list.iter(), "u1");
        assert_eq!(sorted, vec![&b, &a]);
    }

    #[test]
    fn prune_keeps_live_and_the_newest_idle() {
        let revs: Vec<ControllerRevision> = (1..=5)
            .map(|n| ControllerRevision {
                metadata: ObjectMeta {
                    name: Some(format!("r{n}")),
                    ..ObjectMeta::default()
                },
                data: None,
                revision: n,
            })
            .collect();
        let refs: Vec<&ControllerRevision> = revs.iter().collect();
        let live: HashSet<&str> = ["r1", "r5"].into();
        let names = |v: Vec<&ControllerRevision>| -> Vec<String> {
            v.iter().filter_map(|r| r.metadata.name.clone()).collect()
        };
        assert_eq!(names(prune(&refs, &live, 1)), ["r2", "r3"]);
        assert_eq!(names(prune(&refs, &live, 10)), Vec::<String>::new());
        assert_eq!(names(prune(&refs, &live, 0)), ["r2", "r3", "r4"]);
    }
}
