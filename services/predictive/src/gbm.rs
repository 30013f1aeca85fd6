//! Gradient-boosted regression trees (the `forust-ml` library): one booster per hour ahead, each on the same feature
//! vectors, squared loss on the model's scale, stopped early on the newest tenth of the fitting origins.
//!
//! Stored as flat tensors of the trees' nodes (what prediction needs), not as the library's JSON, which keeps every
//! node's training statistics and is about seven times larger.

use std::collections::HashMap;
use std::sync::Arc;

use airq_api::model::Gbm;
use candle_core::{Device, Tensor};
use forust_ml::objective::ObjectiveType;
use forust_ml::{GradientBooster, Matrix};

use crate::model::ModelError;

type Result<T> = std::result::Result<T, ModelError>;

/// A tree node in the library's serde form.
#[derive(serde::Serialize)]
struct StoredNode {
    num: usize,
    weight_value: f32,
    hessian_sum: f32,
    depth: usize,
    split_value: f64,
    split_feature: usize,
    split_gain: f32,
    missing_node: usize,
    left_child: usize,
    right_child: usize,
    is_leaf: bool,
}

/// The boosters, hour ahead `h` at index `h - 1`.
#[derive(Clone)]
pub(crate) struct GbmModel {
    boosters: Arc<Vec<GradientBooster>>,
}

impl std::fmt::Debug for GbmModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GbmModel")
            .field("boosters", &self.boosters.len())
            .field("trees", &self.trees())
            .finish()
    }
}

/// `rows × dim` row-major features as the column-major `f64` matrix the library reads.
fn columns(x: &[f32], dim: usize) -> Vec<f64> {
    let rows = x.len() / dim.max(1);
    let mut out = vec![0f64; rows * dim];
    for (i, row) in x.chunks(dim.max(1)).enumerate() {
        for (j, v) in row.iter().enumerate() {
            out[j * rows + i] = f64::from(*v);
        }
    }
    out
}

fn booster(g: &Gbm) -> GradientBooster {
    GradientBooster::default()
        .set_objective_type(ObjectiveType::SquaredLoss)
        .set_iterations(g.trees as usize)
        .set_learning_rate(g.learning_rate as f32)
        .set_max_depth(g.max_depth as usize)
        .set_max_leaves(g.max_leaves as usize)
        .set_min_leaf_weight(g.min_leaf_samples as f32)
        .set_l2(g.l2 as f32)
        .set_initialize_base_score(true)
        .set_early_stopping_rounds(Some(g.early_stopping_rounds as usize))
        .set_parallel(true)
        .set_seed(0x4149_5251)
}

impl GbmModel {
    /// Fits one booster per hour ahead on `x` (n × dim) and `y` (n × horizon); the origins at or after the newest
    /// tenth's first time (`times`) decide when each stops. `progress(done, of)` after each booster.
    pub(crate) fn fit(
        x: &[f32],
        y: &[f32],
        times: &[i64],
        dim: usize,
        horizon: usize,
        g: &Gbm,
        progress: &dyn Fn(usize, usize),
    ) -> Result<Self> {
        let (train, valid) = crate::model::hold_out_newest(times)?;
        let gather = |rows: &[usize]| -> Vec<f32> {
            rows.iter()
                .flat_map(|r| x[r * dim..(r + 1) * dim].iter().copied())
                .collect()
        };
        let train_x = columns(&gather(&train), dim);
        let valid_x = columns(&gather(&valid), dim);
        let train_m = Matrix::new(&train_x, train.len(), dim);
        let train_w = vec![1f64; train.len()];
        let valid_w = vec![1f64; valid.len()];
        let mut boosters = Vec::with_capacity(horizon);
        progress(0, horizon);
        for h in 0..horizon {
            let target = |rows: &[usize]| -> Vec<f64> { rows.iter().map(|r| f64::from(y[r * horizon + h])).collect() };
            let train_y = target(&train);
            let valid_y = target(&valid);
            let mut b = booster(g);
            b.fit(
                &train_m,
                &train_y,
                &train_w,
                Some(vec![(Matrix::new(&valid_x, valid.len(), dim), &valid_y, &valid_w)]),
            )
            .map_err(|e| ModelError::InvalidParameter(format!("gradient boosting, {} h ahead: {e}", h + 1)))?;
            // Keep only the trees up to the best round on the held-out origins.
            if let Some(best) = b.prediction_iteration.take() {
                b.trees.truncate(best);
            }
            boosters.push(b);
            progress(h + 1, horizon);
        }
        Ok(Self {
            boosters: Arc::new(boosters),
        })
    }

    /// Trees kept per booster.
    pub(crate) fn trees(&self) -> Vec<usize> {
        self.boosters.iter().map(|b| b.trees.len()).collect()
    }

    /// Forecasts (m × horizon) for `q` (m × dim): every hour ahead, or only those `wanted` admits (the others NaN —
    /// a request for one hour walks one booster's trees instead of every booster's).
    pub(crate) fn predict(&self, q: &[f32], dim: usize, wanted: &crate::model::Hours) -> Vec<f32> {
        let m = q.len() / dim.max(1);
        let horizon = self.boosters.len();
        let data = columns(q, dim);
        let matrix = Matrix::new(&data, m, dim);
        // Threads pay off only for batches (the evaluation's); one request's forecast stays on its thread.
        let parallel = m >= 256;
        let mut out = vec![f32::NAN; m * horizon];
        for (h, b) in self.boosters.iter().enumerate() {
            if !wanted.admits(h + 1) {
                continue;
            }
            for (i, v) in b.predict(&matrix, parallel).into_iter().enumerate() {
                out[i * horizon + h] = v as f32;
            }
        }
        out
    }

    /// The trees as tensors: per booster its base score and tree count, per tree its node count, per node what
    /// prediction reads.
    pub(crate) fn to_tensors(&self, t: &mut HashMap<String, Tensor>) -> Result<()> {
        let cpu = &Device::Cpu;
        let mut base = Vec::new();
        let mut trees = Vec::new();
        let mut nodes = Vec::new();
        let (mut feature, mut split, mut weight) = (Vec::new(), Vec::new(), Vec::new());
        let (mut left, mut right, mut missing, mut leaf) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for b in self.boosters.iter() {
            base.push(b.base_score);
            trees.push(b.trees.len() as u32);
            for tree in &b.trees {
                nodes.push(tree.nodes.len() as u32);
                for n in &tree.nodes {
                    feature.push(n.split_feature as u32);
                    split.push(n.split_value);
                    weight.push(n.weight_value);
                    left.push(n.left_child as u32);
                    right.push(n.right_child as u32);
                    missing.push(n.missing_node as u32);
                    leaf.push(u8::from(n.is_leaf));
                }
            }
        }
        t.insert("gbm.base".into(), Tensor::new(base, cpu)?);
        t.insert("gbm.trees".into(), Tensor::new(trees, cpu)?);
        t.insert("gbm.nodes".into(), Tensor::new(nodes, cpu)?);
        t.insert("gbm.feature".into(), Tensor::new(feature, cpu)?);
        t.insert("gbm.split".into(), Tensor::new(split, cpu)?);
        t.insert("gbm.weight".into(), Tensor::new(weight, cpu)?);
        t.insert("gbm.left".into(), Tensor::new(left, cpu)?);
        t.insert("gbm.right".into(), Tensor::new(right, cpu)?);
        t.insert("gbm.missing".into(), Tensor::new(missing, cpu)?);
        t.insert("gbm.leaf".into(), Tensor::new(leaf, cpu)?);
        Ok(())
    }

    /// Reads what [`GbmModel::to_tensors`] wrote; `dim` bounds the split features.
    pub(crate) fn from_tensors(t: &HashMap<String, Tensor>, dim: usize, g: &Gbm) -> Result<Self> {
        let bad = |what: &str| ModelError::Artifact(format!("gradient-boosting trees: {what}"));
        let get = |name: &str| t.get(name).ok_or_else(|| bad(&format!("tensor {name} is missing")));
        let base = get("gbm.base")?.to_vec1::<f64>()?;
        let trees = get("gbm.trees")?.to_vec1::<u32>()?;
        let nodes = get("gbm.nodes")?.to_vec1::<u32>()?;
        let feature = get("gbm.feature")?.to_vec1::<u32>()?;
        let split = get("gbm.split")?.to_vec1::<f64>()?;
        let weight = get("gbm.weight")?.to_vec1::<f32>()?;
        let left = get("gbm.left")?.to_vec1::<u32>()?;
        let right = get("gbm.right")?.to_vec1::<u32>()?;
        let missing = get("gbm.missing")?.to_vec1::<u32>()?;
        let leaf = get("gbm.leaf")?.to_vec1::<u8>()?;
        let total = feature.len();
        if [
            split.len(),
            weight.len(),
            left.len(),
            right.len(),
            missing.len(),
            leaf.len(),
        ]
        .iter()
        .any(|l| *l != total)
            || base.len() != trees.len()
            || trees.iter().map(|c| *c as usize).sum::<usize>() != nodes.len()
            || nodes.iter().map(|c| *c as usize).sum::<usize>() != total
        {
            return Err(bad("the node tables disagree in length"));
        }
        let mut boosters = Vec::with_capacity(base.len());
        let (mut tree_at, mut node_at) = (0usize, 0usize);
        for (score, count) in base.iter().zip(&trees) {
            let mut b = booster(g);
            b.base_score = *score;
            for _ in 0..*count {
                let size = nodes[tree_at] as usize;
                tree_at += 1;
                let range = node_at..node_at + size;
                node_at += size;
                let mut tree_nodes = Vec::with_capacity(size);
                for (num, i) in range.enumerate() {
                    let is_leaf = leaf[i] != 0;
                    let children = [left[i], right[i], missing[i]].map(|c| c as usize);
                    // A split must name a feature and children inside its tree: a damaged artifact must not index
                    // out of bounds while forecasting.
                    if !is_leaf && (feature[i] as usize >= dim || children.iter().any(|c| *c >= size || *c <= num)) {
                        return Err(bad(&format!("node {num} of a tree points outside it")));
                    }
                    tree_nodes.push(StoredNode {
                        num,
                        weight_value: weight[i],
                        hessian_sum: 0.0,
                        depth: 0,
                        split_value: split[i],
                        split_feature: feature[i] as usize,
                        split_gain: 0.0,
                        missing_node: children[2],
                        left_child: children[0],
                        right_child: children[1],
                        is_leaf,
                    });
                }
                // The library's node type is not public; its serde form is.
                let tree: forust_ml::tree::Tree = serde_json::from_value(serde_json::json!({ "nodes": tree_nodes }))
                    .map_err(|e| bad(&e.to_string()))?;
                b.trees.push(tree);
            }
            boosters.push(b);
        }
        Ok(Self {
            boosters: Arc::new(boosters),
        })
    }
}
