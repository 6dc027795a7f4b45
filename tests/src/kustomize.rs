//! What `kubectl apply -k DIR` applies, built without kubectl from the kustomizations the
//! repository ships: their `resources` (files, and directories holding a kustomization of
//! their own), `images` and inline JSON 6902 `patches`, the only kustomize features used
//! there (any other field is refused).
//! Tests of an overlay then see the objects it applies, patched, even where kubectl is not
//! installed; where it is, a test compares this build with kubectl's.

use crate::manifests::parse_documents;
use crate::repo_root;
use serde_yaml_ng::Value as Yaml;
use std::collections::BTreeMap;

/// The objects `kubectl apply -k dir` applies (`dir` relative to the repository root), in
/// kustomize's resource order: each resource's documents, then the patches applied.
/// Panics naming the kustomization, the patch or the path that cannot be used.
pub fn build(dir: &str) -> Vec<Yaml> {
    let root = repo_root().join(dir);
    let file = format!("{dir}/kustomization.yaml");
    let text = std::fs::read_to_string(root.join("kustomization.yaml")).unwrap_or_else(|e| panic!("{file}: {e}"));
    let kustomization = parse_documents(&text).unwrap_or_else(|e| panic!("{file}: {e}")).remove(0);
    for (key, _) in kustomization.as_mapping().expect("a kustomization is a mapping") {
        let known = ["apiVersion", "kind", "resources", "images", "patches"];
        assert!(known.iter().any(|k| key == k), "{file}: {key:?} is not built here");
    }
    let mut objects = Vec::new();
    for resource in kustomization["resources"].as_sequence().into_iter().flatten() {
        let resource = resource.as_str().unwrap_or_else(|| panic!("{file}: a resource is not a path"));
        let path = root.join(resource);
        if path.is_dir() {
            let base = path.canonicalize().unwrap_or_else(|e| panic!("{file}: {resource}: {e}"));
            let base =
                base.strip_prefix(repo_root().canonicalize().expect("repository root")).expect("in the repository");
            objects.extend(build(&base.to_string_lossy()));
        } else {
            let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{file}: {resource}: {e}"));
            objects.extend(parse_documents(&text).unwrap_or_else(|e| panic!("{file}: {resource}: {e}")));
        }
    }
    for image in kustomization["images"].as_sequence().into_iter().flatten() {
        objects.iter_mut().for_each(|object| set_image(object, image));
    }
    for patch in kustomization["patches"].as_sequence().into_iter().flatten() {
        let target = &patch["target"];
        let operations: Yaml = serde_yaml_ng::from_str(patch["patch"].as_str().expect("an inline patch"))
            .unwrap_or_else(|e| panic!("{file}: patch of {target:?}: {e}"));
        let mut patched = 0;
        for object in objects.iter_mut().filter(|o| targets(target, o)) {
            for operation in operations.as_sequence().expect("a JSON 6902 patch is a list of operations") {
                apply(object, operation).unwrap_or_else(|e| panic!("{file}: patch of {target:?}: {e}"));
            }
            patched += 1;
        }
        assert_eq!(patched, 1, "{file}: the patch's target {target:?} selects {patched} objects");
    }
    objects
}

/// An `images` entry (`name`, optional `newName`, `newTag`) applied to a workload's containers.
fn set_image(object: &mut Yaml, image: &Yaml) {
    let name = image["name"].as_str().expect("images[].name");
    // `get_mut`, not indexing: indexing a mapping for writing adds the keys it lacks.
    let containers = ["spec", "template", "spec", "containers"]
        .iter()
        .try_fold(&mut *object, |value, key| value.get_mut(key))
        .and_then(Yaml::as_sequence_mut);
    for container in containers.into_iter().flatten() {
        let current = container["image"].as_str().unwrap_or("").to_string();
        let (current_name, current_tag) = current.rsplit_once(':').unwrap_or((&current, ""));
        if current_name != name {
            continue;
        }
        let new_name = image["newName"].as_str().unwrap_or(current_name);
        let new_tag = image["newTag"].as_str().unwrap_or(current_tag);
        container["image"] = Yaml::from(format!("{new_name}:{new_tag}"));
    }
}

/// Whether a patch's `target` (group, version, kind, name, namespace; each optional) selects `object`.
fn targets(target: &Yaml, object: &Yaml) -> bool {
    let api_version = object["apiVersion"].as_str().unwrap_or("");
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    let actual = [
        ("group", group),
        ("version", version),
        ("kind", object["kind"].as_str().unwrap_or("")),
        ("name", object["metadata"]["name"].as_str().unwrap_or("")),
        ("namespace", object["metadata"]["namespace"].as_str().unwrap_or("")),
    ];
    actual.iter().all(|(field, value)| target[*field].as_str().is_none_or(|wanted| wanted == *value))
}

/// Applies one JSON 6902 operation (`add`, `replace` or `remove`, RFC 6902 §4.1-4.3).
fn apply(object: &mut Yaml, operation: &Yaml) -> Result<(), String> {
    let op = operation["op"].as_str().ok_or("an operation without `op`")?;
    let path = operation["path"].as_str().ok_or("an operation without `path`")?;
    let tokens: Vec<String> =
        path.split('/').skip(1).map(|token| token.replace("~1", "/").replace("~0", "~")).collect();
    let (last, parents) = tokens.split_last().ok_or_else(|| format!("{op} {path}: the whole document"))?;
    let mut parent = &mut *object;
    for token in parents {
        parent = match parent {
            Yaml::Mapping(map) => map.get_mut(token.as_str()),
            Yaml::Sequence(items) => token.parse::<usize>().ok().and_then(|i| items.get_mut(i)),
            _ => None,
        }
        .ok_or_else(|| format!("{op} {path}: no {token}"))?;
    }
    let value = || operation.get("value").cloned().ok_or_else(|| format!("{op} {path}: no value"));
    match (op, parent) {
        ("add", Yaml::Sequence(items)) if last == "-" => items.push(value()?),
        ("add" | "replace", Yaml::Mapping(map)) => {
            if op == "replace" && !map.contains_key(last.as_str()) {
                return Err(format!("replace {path}: nothing there"));
            }
            map.insert(Yaml::from(last.as_str()), value()?);
        }
        ("remove", Yaml::Mapping(map)) => {
            map.remove(last.as_str()).ok_or_else(|| format!("remove {path}: nothing there"))?;
        }
        (op, _) => return Err(format!("{op} {path}: not supported here")),
    }
    Ok(())
}

/// Objects keyed by `apiVersion kind namespace/name`, for comparing builds whatever their
/// order; panics on an object twice (kubectl refuses that too).
pub fn by_identity(objects: Vec<Yaml>) -> BTreeMap<String, Yaml> {
    let mut keyed = BTreeMap::new();
    for object in objects {
        let key = format!(
            "{} {} {}/{}",
            object["apiVersion"].as_str().unwrap_or(""),
            object["kind"].as_str().unwrap_or(""),
            object["metadata"]["namespace"].as_str().unwrap_or(""),
            object["metadata"]["name"].as_str().unwrap_or("")
        );
        assert!(keyed.insert(key.clone(), object).is_none(), "{key} twice");
    }
    keyed
}
