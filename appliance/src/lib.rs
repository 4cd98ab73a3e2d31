//! hearth appliance: spec, PKI, cloud-init seeds, libvirt, first boot, readiness (not built yet).
