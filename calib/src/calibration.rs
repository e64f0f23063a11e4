//! Camera + extrinsics bundle, serialized as TOML (embeddable in a model manifest):
//! ```toml
//! [camera]
//! width = 640
//! height = 480
//! fx = 536.07
//! fy = 536.02
//! cx = 342.37
//! cy = 235.54
//! model = "pinhole"          # or "fisheye"
//! dist = [-0.265, -0.0467, 0.00183, -0.000315, 0.252]
//!
//! [extrinsics]               # see `extrinsics` module docs
//! height = 1.5
//! pitch = 8.0
//! roll = 0.0
//! yaw = 0.0
//! ```

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::camera::CameraModel;
use crate::error::CalibError;
use crate::extrinsics::{Extrinsics, ExtrinsicsToml, toml_err};

#[derive(Debug, Clone, PartialEq)]
pub struct Calibration {
    pub camera: CameraModel,
    pub extrinsics: Extrinsics,
}

/// Serde form of [`Calibration`] (what a manifest embeds).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CalibrationToml {
    pub camera: CameraModel,
    pub extrinsics: ExtrinsicsToml,
}

impl Calibration {
    pub fn to_serde(&self) -> CalibrationToml {
        CalibrationToml {
            camera: self.camera.clone(),
            extrinsics: self.extrinsics.to_toml_struct(),
        }
    }
    pub fn from_serde(t: &CalibrationToml, path: &Path) -> Result<Self, CalibError> {
        Ok(Calibration {
            camera: t.camera.clone(),
            extrinsics: Extrinsics::from_toml_struct(&t.extrinsics, path)?,
        })
    }
    pub fn from_toml_str(text: &str, path: &Path) -> Result<Self, CalibError> {
        let t: CalibrationToml = toml::from_str(text).map_err(|e| toml_err(path, e))?;
        Self::from_serde(&t, path)
    }
    pub fn to_toml_string(&self) -> String {
        toml::to_string(&self.to_serde()).unwrap_or_default()
    }
    pub fn load(path: impl AsRef<Path>) -> Result<Self, CalibError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| CalibError::io(path, e))?;
        Self::from_toml_str(&text, path)
    }
    pub fn save(&self, path: impl AsRef<Path>) -> Result<(), CalibError> {
        let path = path.as_ref();
        std::fs::write(path, self.to_toml_string()).map_err(|e| CalibError::io(path, e))
    }
}
