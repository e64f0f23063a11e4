//! bevrt-calib: camera models, calibration and BEV geometry.
