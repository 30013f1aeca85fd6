//! The custom resources `airq up` acts on, read from YAML files (one or more documents each) in a folder: the same
//! EtlSchedule, PredictiveModel, AdhocService and Platform manifests a cluster takes, checked with the same rules and
//! messages as the operator's.

use std::path::{Path, PathBuf};

use airq_api::{AdhocService, EtlSchedule, Platform, PredictiveModel, validation};
use serde::de::DeserializeOwned;
use serde_json::Value;

/// A resource that cannot be used, and why: the file, the object, the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: {object}: {message}")]
pub struct Invalid {
    pub file: String,
    /// `Kind/name`, or the document's number when it has neither.
    pub object: String,
    pub message: String,
}

/// The resources found in a folder.
#[derive(Debug, Default, Clone)]
pub struct Resources {
    pub etl_schedules: Vec<EtlSchedule>,
    pub models: Vec<PredictiveModel>,
    pub adhoc_services: Vec<AdhocService>,
    pub platform: Option<Platform>,
    /// Documents left out, each with its reason.
    pub invalid: Vec<Invalid>,
    /// Documents of other kinds or API groups (a Secret, a Deployment…), which one machine has no use for.
    pub ignored: Vec<String>,
}

/// Why a folder cannot be read at all.
#[derive(Debug, thiserror::Error)]
#[error("cannot read the resources in {path}")]
pub struct ReadError {
    path: String,
    source: std::io::Error,
}

/// Reads every `*.yaml` and `*.yml` file of `dir` (not its subfolders), in name order.
pub fn read_dir(dir: &Path) -> Result<Resources, ReadError> {
    let error = |source| ReadError {
        path: dir.display().to_string(),
        source,
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(error)?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    let mut resources = Resources::default();
    for file in files {
        let text = std::fs::read_to_string(&file).map_err(error)?;
        resources.add_file(&file.display().to_string(), &text);
    }
    Ok(resources)
}

impl Resources {
    /// Adds the documents of one file (`name` is how errors name it).
    pub fn add_file(&mut self, name: &str, text: &str) {
        let documents: Vec<Value> = match serde_saphyr::from_multiple::<Value>(text) {
            Ok(documents) => documents,
            Err(e) => {
                self.invalid.push(Invalid {
                    file: name.to_owned(),
                    object: "the file".to_owned(),
                    message: format!("is not YAML: {e}"),
                });
                return;
            }
        };
        for (index, document) in documents.into_iter().enumerate() {
            if document.is_null() {
                continue;
            }
            let kind = document["kind"].as_str().unwrap_or_default().to_owned();
            let object = match document["metadata"]["name"].as_str() {
                Some(n) => format!("{kind}/{n}"),
                None => format!("document {}", index + 1),
            };
            let invalid = |message: String| Invalid {
                file: name.to_owned(),
                object: object.clone(),
                message,
            };
            let api_version = document["apiVersion"].as_str().unwrap_or_default();
            if api_version != "airq.dev/v1alpha1" {
                self.ignored.push(format!("{name}: {object} ({api_version})"));
                continue;
            }
            if document["metadata"]["name"].as_str().is_none_or(str::is_empty) {
                self.invalid.push(invalid("metadata.name: required".to_owned()));
                continue;
            }
            let outcome = match kind.as_str() {
                "EtlSchedule" => typed::<EtlSchedule>(document).and_then(|r| {
                    validation::etl_schedule(&r.spec).map_err(|p| p.to_string())?;
                    self.etl_schedules.push(r);
                    Ok(())
                }),
                "PredictiveModel" => typed::<PredictiveModel>(document).and_then(|r| {
                    validation::predictive_model(&r.spec).map_err(|p| p.to_string())?;
                    self.models.push(r);
                    Ok(())
                }),
                "AdhocService" => typed::<AdhocService>(document).and_then(|r| {
                    validation::adhoc_service(&r.spec).map_err(|p| p.to_string())?;
                    self.adhoc_services.push(r);
                    Ok(())
                }),
                "Platform" => typed::<Platform>(document).map(|r| {
                    self.platform = Some(r);
                }),
                other => Err(format!(
                    "kind {other:?} is not one of EtlSchedule, PredictiveModel, AdhocService or Platform"
                )),
            };
            if let Err(message) = outcome {
                self.invalid.push(invalid(message));
            }
        }
    }
}

/// The document as the resource's Rust type: a field of the wrong type or a missing required one is named.
fn typed<T: DeserializeOwned>(document: Value) -> Result<T, String> {
    serde_json::from_value(document).map_err(|e| format!("spec does not match the resource's schema: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_repository_examples_are_all_valid() {
        let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
        let resources = read_dir(&examples).expect("the examples folder");
        assert!(resources.invalid.is_empty(), "{:?}", resources.invalid);
        assert!(
            resources
                .etl_schedules
                .iter()
                .any(|e| e.metadata.name.as_deref() == Some("beijing"))
        );
        assert!(!resources.models.is_empty() && !resources.adhoc_services.is_empty());
        assert!(resources.platform.is_some());
    }

    #[test]
    fn invalid_documents_are_named_with_the_operator_s_messages() {
        let mut resources = Resources::default();
        resources.add_file(
            "bad.yaml",
            "apiVersion: airq.dev/v1alpha1\nkind: EtlSchedule\nmetadata: { name: nightly }\n\
             spec:\n  source: { csv: { url: /data } }\n  schedule: \"every night\"\n---\n\
             apiVersion: airq.dev/v1alpha1\nkind: PredictiveModel\nmetadata: { name: broken }\nspec: { horizonHours: 24 }\n---\n\
             apiVersion: v1\nkind: Secret\nmetadata: { name: openaq }\n---\n\
             apiVersion: airq.dev/v1alpha1\nkind: Cluster\nmetadata: { name: x }\n",
        );
        let messages: Vec<String> = resources.invalid.iter().map(ToString::to_string).collect();
        assert_eq!(messages.len(), 3, "{messages:?}");
        assert!(
            messages[0].starts_with("bad.yaml: EtlSchedule/nightly: spec.schedule:"),
            "{}",
            messages[0]
        );
        assert!(
            messages[1].contains("PredictiveModel/broken") && messages[1].contains("missing field"),
            "{}",
            messages[1]
        );
        assert!(messages[2].contains("kind \"Cluster\""), "{}", messages[2]);
        assert_eq!(resources.ignored.len(), 1);
        let mut broken = Resources::default();
        broken.add_file("broken.yaml", "kind: [unclosed");
        assert!(
            broken.invalid[0].message.starts_with("is not YAML"),
            "{:?}",
            broken.invalid
        );
    }
}
