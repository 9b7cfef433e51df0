use super::*;

/// `ip -j addr show` in a netns podman (netavark) made, as seen on the dev host.
const PODMAN_ADDRS: &str = r#"[{"ifindex":1,"ifname":"lo","flags":["LOOPBACK","UP","LOWER_UP"],"mtu":65536,"qdisc":"noqueue","operstate":"UNKNOWN","group":"default","txqlen":1000,"link_type":"loopback","address":"00:00:00:00:00:00","broadcast":"00:00:00:00:00:00","addr_info":[{"family":"inet","local":"127.0.0.1","prefixlen":8,"scope":"host","label":"lo","valid_life_time":4294967295,"preferred_life_time":4294967295},{"family":"inet6","local":"::1","prefixlen":128,"scope":"host","valid_life_time":4294967295,"preferred_life_time":4294967295}]},{"ifindex":2,"link_index":376,"ifname":"eth0","flags":["BROADCAST","MULTICAST","UP","LOWER_UP"],"mtu":1500,"qdisc":"noqueue","operstate":"UP","group":"default","txqlen":1000,"link_type":"ether","address":"56:22:73:96:c4:d7","broadcast":"ff:ff:ff:ff:ff:ff","link_netnsid":0,"addr_info":[{"family":"inet6","local":"fe80::5422:73ff:fe96:c4d7","prefixlen":64,"scope":"link","valid_life_time":4294967295,"preferred_life_time":4294967295},{"family":"inet","local":"10.88.0.2","prefixlen":16,"broadcast":"10.88.255.255","scope":"global","label":"eth0","valid_life_time":4294967295,"preferred_life_time":4294967295}]}]"#;

const PODMAN_ROUTES: &str = r#"[{"dst":"default","gateway":"10.88.0.1","dev":"eth0","protocol":"static","metric":100,"flags":[]},{"dst":"10.88.0.0/16","dev":"eth0","protocol":"kernel","scope":"link","prefsrc":"10.88.0.2","flags":[]}]"#;

fn iface(name: &str, ipv4: Option<(Ipv4Addr, u8)>) -> Interface {
    Interface {
        name: name.into(),
        mac: "02:00:00:00:00:01".into(),
        mtu: 1500,
        ipv4,
        loopback: name == "lo",
    }
}

#[test]
fn podmans_interface_address_and_gateway_are_read() {
    let all = parse_interfaces(PODMAN_ADDRS).unwrap();
    assert_eq!(all.len(), 2);
    assert!(
        all[0].loopback && all[0].ipv4.is_none(),
        "lo's 127.0.0.1 is host scope"
    );
    let eth0 = choose(&all).unwrap();
    assert_eq!(eth0.name, "eth0");
    assert_eq!(eth0.mac, "56:22:73:96:c4:d7");
    assert_eq!(eth0.mtu, 1500);
    assert_eq!(eth0.ipv4, Some((Ipv4Addr::new(10, 88, 0, 2), 16)));
    assert_eq!(
        parse_gateway(PODMAN_ROUTES).unwrap(),
        Some(Ipv4Addr::new(10, 88, 0, 1))
    );
}

#[test]
fn no_usable_interface_means_no_nic() {
    // `--network none`: only lo.
    let lo_only = r#"[{"ifname":"lo","mtu":65536,"link_type":"loopback","address":"00:00:00:00:00:00","addr_info":[{"family":"inet","local":"127.0.0.1","prefixlen":8,"scope":"host"}]}]"#;
    assert!(choose(&parse_interfaces(lo_only).unwrap()).is_none());
    // An interface with only an IPv6 address is not used (IPv4 only).
    assert!(choose(&[iface("eth0", None)]).is_none());
    assert_eq!(parse_gateway("[]").unwrap(), None);
    assert!(parse_interfaces("not json").is_err());
    assert!(parse_gateway(r#"{"dst":1}"#).is_err());
}

#[test]
fn eth0_is_preferred_then_the_first_with_an_address() {
    let a = Some((Ipv4Addr::new(10, 0, 0, 2), 24));
    let list = [iface("lo", a), iface("net1", a), iface("eth0", a)];
    assert_eq!(choose(&list).unwrap().name, "eth0");
    let list = [iface("lo", a), iface("eth1", None), iface("net1", a)];
    assert_eq!(choose(&list).unwrap().name, "net1");
}

fn network(gateway: Option<Ipv4Addr>, prefix: u8) -> Network {
    Network {
        netns: "/run/netns/x".into(),
        interface: "eth0".into(),
        tap: TAP_NAME.into(),
        mac: "56:22:73:96:c4:d7".into(),
        address: Ipv4Addr::new(10, 88, 0, 2),
        prefix,
        gateway,
        mtu: 1500,
    }
}

#[test]
fn the_guest_gets_the_address_mask_gateway_and_mac() {
    let n = network(Some(Ipv4Addr::new(10, 88, 0, 1)), 16);
    assert_eq!(
        n.kernel_option(),
        "ip=10.88.0.2::10.88.0.1:255.255.0.0::eth0:off"
    );
    assert_eq!(
        network(None, 24).kernel_option(),
        "ip=10.88.0.2:::255.255.255.0::eth0:off"
    );
    assert_eq!(
        network(None, 32).kernel_option(),
        "ip=10.88.0.2:::255.255.255.255::eth0:off"
    );
    assert_eq!(
        network(None, 0).kernel_option(),
        "ip=10.88.0.2:::0.0.0.0::eth0:off"
    );
    let nic = n.nic().unwrap();
    assert_eq!(nic.tap, TAP_NAME);
    assert_eq!(nic.mac, Some([0x56, 0x22, 0x73, 0x96, 0xc4, 0xd7]));
    let mut bad = n.clone();
    bad.mac = "nope".into();
    assert!(bad.nic().is_err());
}

#[test]
fn the_state_keeps_the_network() {
    let n = network(Some(Ipv4Addr::new(10, 88, 0, 1)), 16);
    let json = serde_json::to_string(&n).unwrap();
    assert_eq!(serde_json::from_str::<Network>(&json).unwrap(), n);
}

#[test]
fn netns_paths_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("gone");
    assert!(matches!(discover(&missing), Err(NetworkError::NoNetns(_))));
    let file = dir.path().join("plain");
    std::fs::write(&file, "").unwrap();
    assert!(matches!(discover(&file), Err(NetworkError::NotNetns(_))));
    // A namespace that is gone has nothing to clean up.
    let mut n = network(None, 24);
    n.netns = missing;
    disconnect(&n).unwrap();
    n.netns = file;
    disconnect(&n).unwrap();
    // This process's own namespace file is a network namespace, but not another type.
    assert!(matches!(
        Netns::open(Path::new("/proc/self/ns/uts")),
        Err(NetworkError::NotNetns(_))
    ));
    Netns::open(Path::new("/proc/self/ns/net")).unwrap();
}

#[test]
fn the_spec_names_the_netns() {
    let spec = |namespaces: &str| -> oci_spec::runtime::Spec {
        serde_json::from_str(&format!(
            r#"{{"ociVersion":"1.0.2","linux":{{"namespaces":{namespaces}}}}}"#
        ))
        .unwrap()
    };
    let s = spec(r#"[{"type":"pid"},{"type":"network","path":"/run/netns/netns-1"}]"#);
    assert_eq!(netns_path(&s), Some(PathBuf::from("/run/netns/netns-1")));
    assert_eq!(netns_path(&spec(r#"[{"type":"network"}]"#)), None);
    assert_eq!(netns_path(&spec(r#"[{"type":"pid"}]"#)), None);
    assert_eq!(netns_path(&spec(r#"[{"type":"network","path":""}]"#)), None);
}

/// A network namespace made for a test (as an engine would), removed on drop.
struct TestNetns(String);

impl TestNetns {
    /// A namespace with a veth end `eth0` holding 10.213.0.2/24 and a default route.
    fn with_veth() -> Option<Self> {
        // SAFETY: geteuid(2) has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: needs root (ip netns add)");
            return None;
        }
        let ns = Self(format!("hvl-oci-net-{}", std::process::id()));
        let ip = |args: &str| {
            let st = Command::new("ip")
                .args(args.replace("NS", &ns.0).split(' '))
                .status()
                .expect("run ip (iproute2)");
            assert!(st.success(), "ip {args}");
        };
        ip("netns add NS");
        ip("-n NS link add eth0 type veth peer name peer0");
        ip("-n NS addr add 10.213.0.2/24 dev eth0");
        ip("-n NS link set eth0 up");
        ip("-n NS link set peer0 up");
        ip("-n NS route add default via 10.213.0.1");
        Some(ns)
    }

    fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.0)
    }

    fn run(&self, line: &str) -> String {
        Netns::open(&self.path())
            .unwrap()
            .run(
                line.split(' ').next().unwrap(),
                &line.split(' ').skip(1).collect::<Vec<_>>(),
            )
            .unwrap()
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

#[test]
fn a_real_namespace_is_read_connected_and_cleaned_up() {
    let Some(ns) = TestNetns::with_veth() else {
        return;
    };
    let net = discover(&ns.path()).unwrap().expect("eth0 is found");
    assert_eq!(net.interface, "eth0");
    assert_eq!(net.address, Ipv4Addr::new(10, 213, 0, 2));
    assert_eq!(net.prefix, 24);
    assert_eq!(net.gateway, Some(Ipv4Addr::new(10, 213, 0, 1)));
    assert_eq!(net.mtu, 1500);
    connect(&net).unwrap();
    // Each side's ingress redirects to the other.
    for (from, to) in [("eth0", TAP_NAME), (TAP_NAME, "eth0")] {
        let filters = ns.run(&format!("tc filter show dev {from} ingress"));
        assert!(
            filters.contains(&format!("Egress Redirect to device {to}")),
            "{from}: {filters}"
        );
    }
    let tap = ns.run(&format!("ip -d link show dev {TAP_NAME}"));
    assert!(tap.contains("tun type tap") && tap.contains(",UP"), "{tap}");
    disconnect(&net).unwrap();
    let links = ns.run("ip link show");
    assert!(!links.contains(TAP_NAME), "{links}");
    assert_eq!(ns.run("tc filter show dev eth0 ingress").trim(), "");
    // Twice is fine (delete after a failed create), and the engine removing the veth too.
    disconnect(&net).unwrap();
    ns.run("ip link del dev eth0");
    disconnect(&net).unwrap();
    assert!(discover(&ns.path()).unwrap().is_none(), "no interface left");
}
