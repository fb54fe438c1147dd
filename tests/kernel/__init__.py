"""What the kernel-test guest runs (see vagrant/README.md), and checks of the Vagrant set-up."""
