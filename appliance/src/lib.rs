//! hearth's appliance: the spec of the VMs and cluster, the PKI and tokens the
//! host makes before any VM boots, the kubeadm and cloud-init documents each
//! node receives. (libvirt, launch and readiness are still to come.)

#![warn(missing_docs)]

pub mod cloudinit;
pub mod kubeadm;
pub mod launch;
pub mod libvirt;
pub mod pki;
pub mod seed;
pub mod spec;
pub mod xml;
