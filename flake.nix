{
  description = "hearth: hermetic, content-addressed node images and a self-assembling kubeadm appliance on libvirt";

  inputs = {
    # Pinned by revision: its rustc is 1.91.1 (pkgs/development/compilers/rust/1_91.nix
    # at this commit), which meets the workspace's `rust-version = "1.89"` and
    # edition 2024; nixos-24.05's rustc 1.77 does not.
    nixpkgs.url = "github:NixOS/nixpkgs/09e4b46f8d7edd81c7b1d35a128ff7ebd88a950e";
    flake-utils.url = "github:numtide/flake-utils";
  };

  outputs = { self, nixpkgs, flake-utils }:
    flake-utils.lib.eachSystem [ "x86_64-linux" "aarch64-linux" ] (system:
      let
        pkgs = import nixpkgs { inherit system; };
        # Tools hearth calls at run time or in its tests.
        runtimeTools = with pkgs; [
          qemu_kvm          # qemu-img, qemu-system for the boot tests
          libvirt           # virsh, libvirtd
          e2fsprogs         # e2fsck -fn is the judge of the ext4 writer
          gptfdisk          # sgdisk -v
          cdrkit            # isoinfo
          openssl
          curl
          skopeo            # pushes fixture images in the OCI tests
          docker-distribution  # a real OCI registry on loopback
          cloud-init        # `cloud-init schema` validates generated user-data
          gnutar gzip       # launch unpacks the recipe's Helm and source-archive charts
        ];
        hearth = pkgs.rustPlatform.buildRustPackage {
          pname = "hearth";
          version = "0.1.0";
          src = self;
          cargoLock.lockFile = ./Cargo.lock;
          nativeBuildInputs = [ pkgs.pkg-config pkgs.makeWrapper ];
          buildInputs = [ pkgs.libvirt ];
          # The test suites start servers, registries and VMs; run them from the dev shell.
          doCheck = false;
          postInstall = ''
            wrapProgram $out/bin/hearth --prefix PATH : ${pkgs.lib.makeBinPath runtimeTools}
          '';
          meta = {
            description = "Reproducible qcow2 node images and a self-assembling kubeadm cluster on libvirt";
            license = with pkgs.lib.licenses; [ mit asl20 ];
            mainProgram = "hearth";
          };
        };
      in {
        packages.default = hearth;
        apps.default = flake-utils.lib.mkApp { drv = hearth; };
        devShells.default = pkgs.mkShell {
          inputsFrom = [ hearth ];
          packages = runtimeTools ++ (with pkgs; [ cargo rustc clippy rustfmt cargo-nextest hyperfine git lighttpd ]);
        };
      });
}
