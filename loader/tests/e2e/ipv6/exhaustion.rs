//! IPv6 port exhaustion, with the IPv4 test's assertions
//! (`scale::assert_port_range_exhaustion`): `--port-range` narrowed to 20 ports, 20 held IPv6
//! connections to one destination take them all; a 21st is dropped and counted
//! (`drop_no_port`) without harming them; once they close, the IPv6 tables (`nat6_out`,
//! `nat6_in` in `stats`) empty and 20 new connections fit again.

use std::net::SocketAddrV6;

use super::{add_ipv6, lab, REMOTE6};
use crate::{scale::assert_port_range_exhaustion, support::require_root};

#[test]
#[ignore = "needs root: network namespaces, BPF programs"]
fn ipv6_port_range_exhaustion_and_recovery() {
    let _slot = require_root();
    let lab = lab(8);
    let uplink = add_ipv6(&lab, 8);
    assert_port_range_exhaustion(
        &lab,
        SocketAddrV6::new(REMOTE6.parse().unwrap(), 7101, 0, 0).into(),
        uplink.into(),
        20000,
        20,
    );
}
