//! ext4 reading (to come).
