//! The ops and their kernels: every backward against central finite differences, every fast
//! kernel against its naive oracle, the SBF layer's paths against each other, and small
//! networks built from the ops.

mod composite_network;
mod gradcheck_all_ops;
mod kernels_conv;
mod kernels_sbf_filters_oracle;
