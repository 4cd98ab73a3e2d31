//! hearth's appliance: the spec of the VMs and cluster, the PKI and tokens the
//! host makes before any VM boots, the kubeadm and cloud-init documents each
//! node receives, the libvirt objects that run them, the state kept between
//! commands, and readiness as the host sees it.

#![warn(missing_docs)]

pub mod cloudinit;
pub mod files;
pub mod kubeadm;
pub mod kubeconfig;
pub mod launch;
pub mod libvirt;
pub mod lifecycle;
pub mod pki;
pub mod platform;
pub mod ready;
pub mod secrets;
pub mod seed;
pub mod spec;
pub mod state;
pub mod xml;
