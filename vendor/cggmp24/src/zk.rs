pub mod ring_pedersen_parameters;
