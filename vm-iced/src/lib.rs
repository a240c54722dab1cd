//! `vend-vm`: the vending-machine app. Built in the vm-iced issue; until
//! then this crate has no code.
