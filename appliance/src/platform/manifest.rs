//! Kubernetes objects as JSON values: read from multi-document YAML, found
//! and patched by kind and name, written back as a stream of JSON documents
//! (each JSON document is YAML too, so `kubectl apply -f` and any YAML reader
//! take it, and no YAML quoting question arises). Keys come out sorted
//! (`serde_json`'s map), so the same objects give the same bytes.

use serde_json::Value;

/// One Kubernetes object.
pub type Object = Value;

/// Errors of reading manifests.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// Not YAML.
    #[error("`{origin}` is not YAML: {why}")]
    Yaml {
        /// Which manifest.
        origin: String,
        /// The parser's words.
        why: String,
    },
    /// A document that is not a Kubernetes object.
    #[error("`{origin}`, document {index}: not a Kubernetes object (no kind or metadata.name)")]
    NotAnObject {
        /// Which manifest.
        origin: String,
        /// 1-based document number.
        index: usize,
    },
}

/// The objects of a multi-document YAML manifest (empty documents skipped).
pub fn parse(text: &str, origin: &str) -> Result<Vec<Object>, ManifestError> {
    let docs: Vec<Value> = serde_saphyr::from_multiple(text)
        .map_err(|e| ManifestError::Yaml { origin: origin.to_owned(), why: e.to_string() })?;
    let mut out = Vec::new();
    for (i, doc) in docs.into_iter().enumerate() {
        if doc.is_null() {
            continue;
        }
        if kind(&doc).is_empty() || name(&doc).is_empty() {
            return Err(ManifestError::NotAnObject { origin: origin.to_owned(), index: i + 1 });
        }
        out.push(doc);
    }
    Ok(out)
}

/// A stream of JSON documents, one per object, each after a `---` line.
pub fn emit(objects: &[Object]) -> String {
    let mut s = String::new();
    for o in objects {
        s.push_str("---\n");
        s.push_str(&serde_json::to_string_pretty(o).expect("JSON values serialise"));
        s.push('\n');
    }
    s
}

fn str_at<'a>(o: &'a Object, path: &[&str]) -> &'a str {
    let mut v = o;
    for k in path {
        match v.get(k) {
            Some(x) => v = x,
            None => return "",
        }
    }
    v.as_str().unwrap_or("")
}

/// `kind`.
pub fn kind(o: &Object) -> &str {
    str_at(o, &["kind"])
}

/// `metadata.name`.
pub fn name(o: &Object) -> &str {
    str_at(o, &["metadata", "name"])
}

/// `metadata.namespace` (empty for cluster-scoped objects).
pub fn namespace(o: &Object) -> &str {
    str_at(o, &["metadata", "namespace"])
}

/// `Kind namespace/name` (or `Kind name`), for messages.
pub fn describe(o: &Object) -> String {
    match namespace(o) {
        "" => format!("{} {}", kind(o), name(o)),
        ns => format!("{} {ns}/{}", kind(o), name(o)),
    }
}

/// The object of `kind` named `name`.
pub fn find_mut<'a>(objects: &'a mut [Object], kind_: &str, name_: &str) -> Option<&'a mut Object> {
    objects.iter_mut().find(|o| kind(o) == kind_ && name(o) == name_)
}

/// Size of the object as `kubectl apply` would store it in its
/// last-applied-configuration annotation (compact JSON).
pub fn applied_size(o: &Object) -> usize {
    serde_json::to_vec(o).map_or(0, |v| v.len())
}

/// The pod specs an object carries, each with where it is: workload
/// templates, a CronJob's job template, a Pod itself, and pods held as YAML
/// in a ConfigMap's data (local-path-provisioner keeps its helper pod there).
pub fn pod_specs(o: &Object) -> Vec<(String, Object)> {
    let mut out = Vec::new();
    let at = |path: &[&str]| {
        let mut v = o;
        for k in path {
            v = v.get(k)?;
        }
        Some(v.clone())
    };
    let found = match kind(o) {
        "Deployment" | "DaemonSet" | "StatefulSet" | "ReplicaSet" | "Job" | "ReplicationController" => {
            at(&["spec", "template", "spec"])
        }
        "CronJob" => at(&["spec", "jobTemplate", "spec", "template", "spec"]),
        "Pod" => at(&["spec"]),
        // ARC's runner pods.
        "AutoscalingRunnerSet" | "EphemeralRunnerSet" => at(&["spec", "template", "spec"]),
        _ => None,
    };
    if let Some(spec) = found {
        out.push((describe(o), spec));
    }
    if kind(o) == "ConfigMap"
        && let Some(data) = o.get("data").and_then(Value::as_object)
    {
        for (key, value) in data {
            let Some(text) = value.as_str() else { continue };
            let Ok(inner) = serde_saphyr::from_str::<Value>(text) else { continue };
            if inner.get("kind").and_then(Value::as_str) == Some("Pod")
                && let Some(spec) = inner.get("spec")
            {
                out.push((format!("{} key `{key}` (a Pod)", describe(o)), spec.clone()));
            }
        }
    }
    out
}

/// The containers of a pod spec (init and ephemeral ones too), each as
/// (name, image, imagePullPolicy).
pub fn containers(spec: &Object) -> Vec<(String, String, Option<String>)> {
    let mut out = Vec::new();
    for list in ["initContainers", "containers", "ephemeralContainers"] {
        for c in spec.get(list).and_then(Value::as_array).into_iter().flatten() {
            let get = |k: &str| c.get(k).and_then(Value::as_str).map(str::to_owned);
            out.push((get("name").unwrap_or_default(), get("image").unwrap_or_default(), get("imagePullPolicy")));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_round_trip_and_empty_ones_are_skipped() {
        let text = "---\n# comment only\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\n  namespace: ns\n\
                    data:\n  mode: \"0644\"\n  on: \"yes\"\n  helper.yaml: |-\n    apiVersion: v1\n    kind: Pod\n    \
                    spec:\n      containers:\n      - name: h\n        image: busybox\n---\n";
        let objs = parse(text, "t.yaml").unwrap();
        assert_eq!(objs.len(), 1);
        assert_eq!(describe(&objs[0]), "ConfigMap ns/a");
        assert_eq!(objs[0]["data"]["mode"], "0644");
        let again = parse(&emit(&objs), "emitted").unwrap();
        assert_eq!(again, objs);
        let pods = pod_specs(&objs[0]);
        assert_eq!(pods.len(), 1);
        assert_eq!(containers(&pods[0].1), [("h".into(), "busybox".into(), None)]);
    }

    #[test]
    fn a_document_without_a_name_is_refused() {
        let e = parse("kind: Service\nmetadata: {}\n", "svc.yaml").unwrap_err().to_string();
        assert!(e.contains("`svc.yaml`, document 1"), "{e}");
    }
}
