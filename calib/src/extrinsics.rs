//! Camera-to-vehicle extrinsics.
//!
//! **Vehicle frame**: x forward, y left, z up (right-handed, ISO 8855 / ROS REP-103), origin
//! on the ground plane (z = 0 is the ground). **Camera frame**: OpenCV's, x right, y down,
//! z forward (optical axis).
//!
//! **Angles** (degrees) describe the camera relative to a reference camera that sits at
//! (x, y, height) looking straight forward along vehicle +x with a level horizon:
//! `R_cam_to_vehicle = Rz(yaw) * Ry(pitch) * Rx(roll) * R0`, where R0 maps camera axes to
//! vehicle axes (cam x -> -y, cam y -> -z, cam z -> +x) and Rx/Ry/Rz rotate about the vehicle
//! axes. Positive pitch tilts the camera **down** toward the ground, positive yaw turns it to
//! the **left**, positive roll rotates it clockwise as seen from behind (right-hand rule about x).
//!
//! TOML (either the angle form or a 4x4 camera-to-vehicle `matrix`, row-major, metres):
//! ```toml
//! height = 1.5   # metres above the ground (vehicle z)
//! x = 1.2        # optional, default 0
//! y = 0.0        # optional, default 0
//! pitch = 8.0    # degrees, positive = looking down
//! roll = 0.0
//! yaw = 0.0
//! ```
//! ```toml
//! matrix = [[0.0, 0.0, 1.0, 1.2], [-1.0, 0.0, 0.0, 0.0], [0.0, -1.0, 0.0, 1.5], [0.0, 0.0, 0.0, 1.0]]
//! ```

use std::path::Path;

use nalgebra::{
    Isometry3, Matrix3, Matrix4, Point2, Point3, Rotation3, Translation3, UnitQuaternion, Vector3,
};
use serde::{Deserialize, Serialize};

use crate::camera::CameraModel;
use crate::error::CalibError;

/// Camera-to-vehicle rigid transform: `p_vehicle = cam_to_vehicle * p_cam`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Extrinsics {
    pub cam_to_vehicle: Isometry3<f64>,
}

/// Ground plane in some frame: `normal . p + d = 0`, normal unit length.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Plane {
    pub normal: Vector3<f64>,
    pub d: f64,
}

fn r0() -> Matrix3<f64> {
    // columns = camera axes expressed in vehicle frame
    Matrix3::new(0.0, 0.0, 1.0, -1.0, 0.0, 0.0, 0.0, -1.0, 0.0)
}

/// TOML representation of [`Extrinsics`].
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ExtrinsicsToml {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub height: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub x: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub y: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pitch: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub roll: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub yaw: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub matrix: Option<Vec<Vec<f64>>>,
}

impl Extrinsics {
    /// From position and angles in degrees (see module docs).
    pub fn from_angles(
        x: f64,
        y: f64,
        height: f64,
        pitch_deg: f64,
        roll_deg: f64,
        yaw_deg: f64,
    ) -> Self {
        let r = Rotation3::from_axis_angle(&Vector3::z_axis(), yaw_deg.to_radians())
            * Rotation3::from_axis_angle(&Vector3::y_axis(), pitch_deg.to_radians())
            * Rotation3::from_axis_angle(&Vector3::x_axis(), roll_deg.to_radians());
        let rot = Rotation3::from_matrix_unchecked(r.matrix() * r0());
        Extrinsics {
            cam_to_vehicle: Isometry3::from_parts(
                Translation3::new(x, y, height),
                UnitQuaternion::from_rotation_matrix(&rot),
            ),
        }
    }

    /// Camera at `height` above the vehicle origin, angles in degrees.
    pub fn from_height_pitch_roll_yaw(
        height: f64,
        pitch_deg: f64,
        roll_deg: f64,
        yaw_deg: f64,
    ) -> Self {
        Self::from_angles(0.0, 0.0, height, pitch_deg, roll_deg, yaw_deg)
    }

    /// The same mounting up to float noise: within a micrometre and a microradian (a pose
    /// republished many times a second, or read back from a file, is not a change).
    pub fn same_pose(&self, other: &Extrinsics) -> bool {
        let (a, b) = (&self.cam_to_vehicle, &other.cam_to_vehicle);
        (a.translation.vector - b.translation.vector).norm() < 1e-6
            && a.rotation.angle_to(&b.rotation) < 1e-6
    }

    /// From a 4x4 camera-to-vehicle matrix; the rotation part must be orthonormal (1e-4).
    pub fn from_matrix(m: &Matrix4<f64>) -> Result<Self, CalibError> {
        let r: Matrix3<f64> = m.fixed_view::<3, 3>(0, 0).into_owned();
        let err = (r.transpose() * r - Matrix3::identity()).abs().max();
        if err.is_nan() || err >= 1e-4 || (r.determinant() - 1.0).abs() > 1e-4 {
            return Err(CalibError::invalid(
                "matrix",
                "rotation part is not a proper rotation",
            ));
        }
        let bottom = [m[(3, 0)], m[(3, 1)], m[(3, 2)], m[(3, 3)]];
        if bottom != [0.0, 0.0, 0.0, 1.0] {
            return Err(CalibError::invalid(
                "matrix",
                "last row must be [0, 0, 0, 1]",
            ));
        }
        let rot = crate::geom::orthonormalize(&r);
        Ok(Extrinsics {
            cam_to_vehicle: Isometry3::from_parts(
                Translation3::new(m[(0, 3)], m[(1, 3)], m[(2, 3)]),
                UnitQuaternion::from_rotation_matrix(&rot),
            ),
        })
    }

    pub fn matrix(&self) -> Matrix4<f64> {
        self.cam_to_vehicle.to_homogeneous()
    }

    pub fn vehicle_to_cam(&self) -> Isometry3<f64> {
        self.cam_to_vehicle.inverse()
    }

    /// (x, y, height, pitch, roll, yaw) with angles in degrees.
    pub fn to_angles(&self) -> (f64, f64, f64, f64, f64, f64) {
        let m = self.cam_to_vehicle.rotation.to_rotation_matrix().matrix() * r0().transpose();
        let pitch = (-m[(2, 0)]).clamp(-1.0, 1.0).asin();
        let roll = m[(2, 1)].atan2(m[(2, 2)]);
        let yaw = m[(1, 0)].atan2(m[(0, 0)]);
        let t = self.cam_to_vehicle.translation.vector;
        (
            t.x,
            t.y,
            t.z,
            pitch.to_degrees(),
            roll.to_degrees(),
            yaw.to_degrees(),
        )
    }

    /// The ground plane (vehicle z = 0) expressed in the camera frame.
    pub fn ground_plane_in_camera(&self) -> Plane {
        // p_v.z = (R p_c + t).z = 0  -> n = R^T e_z, d = t.z
        let r = self.cam_to_vehicle.rotation.to_rotation_matrix();
        let n = r.matrix().row(2).transpose();
        Plane {
            normal: n,
            d: self.cam_to_vehicle.translation.vector.z,
        }
    }

    /// Intersection of a camera ray (camera frame) with the ground, in vehicle coordinates.
    pub fn ray_to_ground(&self, ray_cam: &Vector3<f64>) -> Option<Point3<f64>> {
        let dir = self.cam_to_vehicle.rotation * ray_cam;
        let o = self.cam_to_vehicle.translation.vector;
        if dir.z >= -1e-12 {
            return None;
        }
        let s = -o.z / dir.z;
        Some(Point3::from(o + dir * s))
    }

    /// PnP from >= 4 ground points with known vehicle coordinates (z = 0) and their pixels.
    /// Returns the extrinsics and the RMS reprojection error in pixels.
    pub fn from_ground_points(
        cam: &CameraModel,
        vehicle_xy: &[Point2<f64>],
        pixels: &[Point2<f64>],
    ) -> Result<(Self, f64), CalibError> {
        if vehicle_xy.len() < 4 || vehicle_xy.len() != pixels.len() {
            return Err(CalibError::invalid(
                "ground points",
                "need >= 4 point pairs of equal count",
            ));
        }
        let obj: Vec<Point3<f64>> = vehicle_xy
            .iter()
            .map(|p| Point3::new(p.x, p.y, 0.0))
            .collect();
        let (pose, rms) = crate::geom::planar_pose(cam, &obj, pixels)
            .ok_or_else(|| CalibError::invalid("ground points", "degenerate configuration"))?;
        // pose: vehicle -> camera
        Ok((
            Extrinsics {
                cam_to_vehicle: pose.inverse(),
            },
            rms,
        ))
    }

    pub fn to_toml_struct(&self) -> ExtrinsicsToml {
        let (x, y, h, p, r, yw) = self.to_angles();
        ExtrinsicsToml {
            height: Some(h),
            x: Some(x),
            y: Some(y),
            pitch: Some(p),
            roll: Some(r),
            yaw: Some(yw),
            matrix: None,
        }
    }

    pub fn from_toml_struct(t: &ExtrinsicsToml, path: &Path) -> Result<Self, CalibError> {
        if let Some(m) = &t.matrix {
            if t.height.is_some()
                || t.pitch.is_some()
                || t.roll.is_some()
                || t.yaw.is_some()
                || t.x.is_some()
                || t.y.is_some()
            {
                return Err(CalibError::field(
                    path,
                    "matrix",
                    "give either `matrix` or height/pitch/roll/yaw, not both",
                ));
            }
            if m.len() != 4 || m.iter().any(|r| r.len() != 4) {
                return Err(CalibError::field(
                    path,
                    "matrix",
                    "must be 4 rows of 4 numbers",
                ));
            }
            let mm = Matrix4::from_fn(|i, j| m[i][j]);
            if mm.iter().any(|v| !v.is_finite()) {
                return Err(CalibError::field(
                    path,
                    "matrix",
                    "contains a non-finite value",
                ));
            }
            return Self::from_matrix(&mm)
                .map_err(|e| CalibError::field(path, "matrix", e.to_string()));
        }
        let height = t
            .height
            .ok_or_else(|| CalibError::field(path, "height", "missing (or give `matrix`)"))?;
        let vals = [
            ("height", Some(height)),
            ("x", t.x),
            ("y", t.y),
            ("pitch", t.pitch),
            ("roll", t.roll),
            ("yaw", t.yaw),
        ];
        for (n, v) in vals {
            if let Some(v) = v
                && !v.is_finite()
            {
                return Err(CalibError::field(path, n, "not finite"));
            }
        }
        if t.pitch.is_none() {
            return Err(CalibError::field(path, "pitch", "missing"));
        }
        Ok(Self::from_angles(
            t.x.unwrap_or(0.0),
            t.y.unwrap_or(0.0),
            height,
            t.pitch.unwrap_or(0.0),
            t.roll.unwrap_or(0.0),
            t.yaw.unwrap_or(0.0),
        ))
    }

    pub fn from_toml_str(text: &str, path: &Path) -> Result<Self, CalibError> {
        let t: ExtrinsicsToml = toml::from_str(text).map_err(|e| toml_err(path, e))?;
        Self::from_toml_struct(&t, path)
    }

    pub fn to_toml_string(&self) -> String {
        format!(
            "# camera-to-vehicle extrinsics; vehicle frame x forward, y left, z up, origin on the ground\n{}",
            toml::to_string(&self.to_toml_struct()).unwrap_or_default()
        )
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

pub(crate) fn toml_err(path: &Path, e: toml::de::Error) -> CalibError {
    // toml's message names the key / line already
    CalibError::parse(path, e.to_string().trim().replace('\n', " "))
}
