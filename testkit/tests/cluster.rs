//! `RedisCluster` against real `redis-server`s: start, slots, redirects, failover, slot
//! migration, resharding, TLS.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use soloist_testkit::{RedisCluster, RedisServer};

/// Sends each command on one connection and returns the replies, one line each: a bulk
/// reply as its content, `(nil)` for a null bulk, other replies as their first line
/// (`+OK`, `-ASK ...`, `:1`, `*2`).
fn raw(port: u16, commands: &[&[&str]]) -> Vec<String> {
    let stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).expect("connect to a node");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut reader = BufReader::new(&stream);
    let mut line = || {
        let mut line = String::new();
        reader.read_line(&mut line).expect("read a reply");
        line.trim_end().to_owned()
    };
    commands
        .iter()
        .map(|args| {
            let mut request = format!("*{}\r\n", args.len());
            for arg in *args {
                request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
            }
            (&stream).write_all(request.as_bytes()).unwrap();
            let reply = line();
            match reply.as_str() {
                "$-1" => "(nil)".to_owned(),
                bulk if bulk.starts_with('$') => line(),
                _ => reply,
            }
        })
        .collect()
}

/// The reply to one command, as [`raw`] gives it.
fn one(port: u16, args: &[&str]) -> String {
    raw(port, &[args]).remove(0)
}

fn info_field(node: &RedisServer, section: &[&str], field: &str) -> String {
    let info = node.cli(section);
    info.lines()
        .find_map(|line| line.trim().strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in {info}"))
        .to_owned()
}

#[test]
fn cluster_starts_with_every_slot_covered_and_redirects_clients() {
    let cluster = RedisCluster::start();
    let (primaries, replicas) = (cluster.primaries(), cluster.replicas());
    assert_eq!((primaries.len(), replicas.len()), (3, 3));
    let urls = cluster.urls();
    assert_eq!(urls.len(), 6);
    for (url, node) in urls.iter().zip(cluster.nodes()) {
        assert_eq!(*url, format!("redis://127.0.0.1:{}", node.port()));
    }

    // Every node sees a healthy cluster of six nodes with every slot assigned.
    for node in cluster.nodes() {
        let info = ["CLUSTER", "INFO"];
        assert_eq!(info_field(node, &info, "cluster_state"), "ok");
        assert_eq!(info_field(node, &info, "cluster_slots_assigned"), "16384");
        assert_eq!(info_field(node, &info, "cluster_slots_ok"), "16384");
        assert_eq!(info_field(node, &info, "cluster_known_nodes"), "6");
        assert_eq!(info_field(node, &info, "cluster_size"), "3");
    }
    // The primaries split the slots between them.
    let mut owned: Vec<u16> = primaries.iter().flat_map(|p| cluster.slots_of(p)).collect();
    owned.sort_unstable();
    assert!(owned.iter().copied().eq(0..RedisCluster::SLOTS));
    // Each replica follows a different primary, with its link up.
    let mut followed: Vec<String> = replicas
        .iter()
        .map(|replica| {
            assert!(cluster.slots_of(replica).is_empty());
            let replication = ["INFO", "replication"];
            assert_eq!(info_field(replica, &replication, "role"), "slave");
            assert_eq!(
                info_field(replica, &replication, "master_link_status"),
                "up"
            );
            info_field(replica, &replication, "master_port")
        })
        .collect();
    followed.sort();
    let mut primary_ports: Vec<String> = primaries.iter().map(|p| p.port().to_string()).collect();
    primary_ports.sort();
    assert_eq!(followed, primary_ports);

    // A write through redis-cli -c lands on the owner of the key's slot.
    for key in ["foo", "{user1}:a", "{user1}:b", "bar"] {
        assert_eq!(cluster.cli(&["SET", key, &format!("v-{key}")]), "OK");
        let slot = RedisCluster::slot_of(key);
        let owner = cluster.primary_for_slot(slot);
        assert!(cluster.slots_of(owner).contains(&slot));
        assert_eq!(owner.cli(&["GET", key]), format!("v-{key}"));
        assert_eq!(cluster.cli(&["GET", key]), format!("v-{key}"));
        // Any other primary redirects.
        let other = cluster.other_primary(slot);
        assert_eq!(
            other.cli(&["GET", key]),
            format!("MOVED {slot} 127.0.0.1:{}", owner.port())
        );
    }
    let key = RedisCluster::key_in_slot(42);
    assert_eq!(RedisCluster::slot_of(&key), 42);
    assert_eq!(RedisCluster::slot_of(&format!("{{{key}}}:x")), 42);
}

#[test]
fn slot_of_agrees_with_cluster_keyslot() {
    let cluster = RedisCluster::start();
    let keys = [
        "",
        "foo",
        "bar",
        "123456789",
        "soloist:lock:report",
        "{user1000}.following",
        "{user1000}.followers",
        "a{user1}b",
        "{}",
        "{}foo",
        "foo{}",
        "foo{}{bar}",
        "}foo{bar}",
        "}{",
        "}{x}",
        "{a}{b}",
        "{{a}}",
        "{",
        "}",
        "a{b",
        "{b}c}",
        "ключ{тег}",
    ];
    let node = cluster.node(3);
    for key in keys {
        let expected: u16 = node
            .cli(&["CLUSTER", "KEYSLOT", key])
            .parse()
            .unwrap_or_else(|e| panic!("CLUSTER KEYSLOT {key:?}: {e}"));
        assert_eq!(RedisCluster::slot_of(key), expected, "slot of {key:?}");
    }
    for slot in [0, 1, 5460, 5461, 16383] {
        let key = RedisCluster::key_in_slot(slot);
        assert_eq!(node.cli(&["CLUSTER", "KEYSLOT", &key]), slot.to_string());
    }
}

#[test]
fn killed_primary_is_replaced_by_its_replica() {
    let mut cluster = RedisCluster::start();
    let key = "{failover}:k";
    let slot = RedisCluster::slot_of(key);
    let owner = cluster.primary_for_slot(slot);
    let (killed_port, owner_id) = (owner.port(), cluster.node_id(owner).to_owned());
    // Every replica following the owner has the write, whichever of them
    // is promoted: `WAIT` on the write's own connection says so.
    let replicas: u32 = info_field(owner, &["INFO", "replication"], "connected_slaves")
        .parse()
        .expect("connected_slaves is a number");
    assert_ne!(replicas, 0, "the owner has a replica");
    let acknowledged =
        owner.write_and_wait(&["SET", key, "before"], replicas, Duration::from_secs(5));
    assert_eq!(acknowledged, replicas, "replicas that have the write");
    let replica = cluster
        .replicas()
        .into_iter()
        .find(|replica| {
            info_field(replica, &["INFO", "replication"], "master_port") == killed_port.to_string()
        })
        .expect("the owner has a replica")
        .port();

    let failover = cluster.kill_primary_of(slot);
    assert_eq!(cluster.node(failover.killed).port(), killed_port);
    assert!(!cluster.node(failover.killed).is_running());
    let promoted = cluster.node(failover.promoted);
    assert_eq!(promoted.port(), replica);
    assert!(
        failover.elapsed > Duration::from_secs(1) && failover.elapsed < Duration::from_secs(60),
        "{failover:?}"
    );
    assert_eq!(cluster.primary_for_slot(slot).port(), replica);
    assert_eq!(
        info_field(promoted, &["INFO", "replication"], "role"),
        "master"
    );
    // The whole cluster agrees the promoted node owns the slot: it serves
    // it, and has the acknowledged write.
    assert_eq!(promoted.get(key).as_deref(), Some("before"));
    assert_eq!(
        (cluster.primaries().len(), cluster.replicas().len()),
        (3, 2)
    );
    assert_eq!(cluster.urls().len(), 5);
    for node in cluster.primaries().into_iter().chain(cluster.replicas()) {
        assert_eq!(
            info_field(node, &["CLUSTER", "INFO"], "cluster_state"),
            "ok"
        );
        assert!(
            node.cli(&["CLUSTER", "NODES"])
                .lines()
                .any(|line| line.starts_with(&owner_id) && line.contains("fail")),
            "the killed node is flagged fail"
        );
    }
    assert_eq!(cluster.cli(&["SET", key, "after"]), "OK");
    assert_eq!(promoted.cli(&["GET", key]), "after");

    // Started again, the old primary rejoins as a replica of its replacement.
    cluster.node_mut(failover.killed).start_again();
    cluster.wait_until_settled();
    let back = cluster.node(failover.killed);
    let replication = ["INFO", "replication"];
    assert_eq!(info_field(back, &replication, "role"), "slave");
    assert_eq!(
        info_field(back, &replication, "master_port"),
        replica.to_string()
    );
    assert_eq!(cluster.urls().len(), 6);
}

#[test]
fn migrated_slot_takes_its_keys_while_clients_write() {
    let cluster = RedisCluster::start();
    let tag = "{migrating}";
    let slot = RedisCluster::slot_of(tag);
    let source = cluster.primary_for_slot(slot);
    let target = cluster.other_primary(slot);
    // 300 keys in the slot, written in one MSET.
    let mut expected: BTreeMap<String, String> = (0..300)
        .map(|n| (format!("{tag}:{n}"), format!("v{n}")))
        .collect();
    let mut mset = vec!["MSET"];
    for (key, value) in &expected {
        mset.extend([key.as_str(), value.as_str()]);
    }
    assert_eq!(source.cli(&mset), "OK");

    // A client keeps writing new keys and overwriting old ones through redis-cli -c, which
    // follows ASK during the migration and MOVED after it.
    let stop = AtomicBool::new(false);
    let writes = AtomicUsize::new(0);
    let written = Mutex::new(Vec::new());
    let wait_for_writes = |more: usize| {
        let goal = writes.load(Ordering::SeqCst) + more;
        let deadline = Instant::now() + Duration::from_secs(30);
        while writes.load(Ordering::SeqCst) < goal {
            assert!(Instant::now() < deadline, "the writer is stuck");
            thread::sleep(Duration::from_millis(5));
        }
    };
    let moved = thread::scope(|scope| {
        scope.spawn(|| {
            for n in 0.. {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let (key, value) = if n % 2 == 0 {
                    (format!("{tag}:w{n}"), format!("w{n}"))
                } else {
                    (format!("{tag}:{}", n % 300), format!("x{n}"))
                };
                assert_eq!(cluster.cli(&["SET", &key, &value]), "OK", "SET {key}");
                written.lock().unwrap().push((key, value));
                writes.fetch_add(1, Ordering::SeqCst);
            }
        });
        wait_for_writes(2);
        let migration = cluster.begin_migration(slot, target);
        wait_for_writes(3);
        let mut moved = 0;
        loop {
            match migration.move_keys(25) {
                0 => break,
                batch => moved += batch,
            }
            wait_for_writes(1);
        }
        wait_for_writes(2);
        moved += migration.move_all_keys();
        migration.finish();
        wait_for_writes(3);
        stop.store(true, Ordering::SeqCst);
        moved
    });
    assert!(moved >= 300, "moved {moved} keys");
    expected.extend(written.into_inner().unwrap());

    assert_eq!(cluster.primary_for_slot(slot).port(), target.port());
    assert!(cluster.slots_of(target).contains(&slot));
    assert!(!cluster.slots_of(source).contains(&slot));
    assert_eq!(
        source.cli(&["CLUSTER", "COUNTKEYSINSLOT", &slot.to_string()]),
        "0"
    );
    assert_eq!(
        target.cli(&["CLUSTER", "COUNTKEYSINSLOT", &slot.to_string()]),
        expected.len().to_string()
    );
    for (key, value) in &expected {
        assert_eq!(target.cli(&["GET", key]), *value, "{key} on the new owner");
    }
    let key = format!("{tag}:0");
    assert_eq!(
        source.cli(&["GET", &key]),
        format!("MOVED {slot} 127.0.0.1:{}", target.port())
    );
    // Every other node redirects to the new owner too, replicas included.
    for node in cluster.nodes() {
        if node.port() != target.port() {
            assert_eq!(
                node.cli(&["GET", &key]),
                format!("MOVED {slot} 127.0.0.1:{}", target.port())
            );
        }
    }
}

#[test]
fn slot_migration_answers_ask_tryagain_then_moved() {
    let cluster = RedisCluster::start();
    let (a, b) = ("{step}:a", "{step}:b");
    let slot = RedisCluster::slot_of(a);
    let source = cluster.primary_for_slot(slot);
    let target = cluster.other_primary(slot);
    assert_eq!(source.cli(&["MSET", a, "1", b, "2"]), "OK");
    let (s, t) = (source.port(), target.port());
    let ask = format!("-ASK {slot} 127.0.0.1:{t}");

    let migration = cluster.begin_migration(slot, target);
    assert_eq!(migration.slot(), slot);
    assert_eq!(migration.source().port(), s);
    assert_eq!(migration.target().port(), t);
    // Nothing moved yet: the source serves both keys and sends new ones to the target.
    assert_eq!(raw(s, &[&["GET", a], &["MGET", a, b]]), ["1", "*2"]);
    assert_eq!(one(s, &["SET", "{step}:new", "n"]), ask);
    // The target redirects back unless asked, then creates the key.
    assert_eq!(one(t, &["GET", a]), format!("-MOVED {slot} 127.0.0.1:{s}"));
    assert_eq!(
        raw(t, &[&["ASKING"], &["SET", "{step}:new", "n"]]),
        ["+OK", "+OK"]
    );

    assert_eq!(migration.move_keys(1), 1);
    let (moved, kept) = if source.cli(&["EXISTS", a]) == "0" {
        (a, b)
    } else {
        (b, a)
    };
    assert_eq!(one(s, &["GET", kept]), if kept == a { "1" } else { "2" });
    assert_eq!(one(s, &["GET", moved]), ask);
    // A multi-key command whose keys are split between the two nodes cannot be served by
    // either until every key is on the target.
    let tryagain = one(s, &["MGET", a, b]);
    assert!(tryagain.starts_with("-TRYAGAIN"), "{tryagain:?}");
    let tryagain = raw(t, &[&["ASKING"], &["MGET", a, b]]);
    assert_eq!(tryagain[0], "+OK");
    assert!(tryagain[1].starts_with("-TRYAGAIN"), "{tryagain:?}");
    assert_eq!(
        raw(t, &[&["ASKING"], &["GET", moved]]),
        ["+OK", if moved == a { "1" } else { "2" }]
    );

    assert_eq!(migration.move_all_keys(), 1);
    // The source has none of the keys left: it sends multi-key commands to the target too.
    assert_eq!(one(s, &["MGET", a, b]), ask);
    assert_eq!(raw(t, &[&["ASKING"], &["MGET", a, b]]), ["+OK", "*2"]);
    migration.finish();
    let moved_reply = format!("-MOVED {slot} 127.0.0.1:{t}");
    assert_eq!(one(s, &["GET", a]), moved_reply);
    assert_eq!(one(s, &["SET", "{step}:other", "o"]), moved_reply);
    assert_eq!(one(t, &["MGET", a, b, "{step}:new"]), "*3");
    assert_eq!(cluster.cli(&["GET", "{step}:new"]), "n");
}

#[test]
fn reshard_moves_slots_with_their_keys() {
    let cluster = RedisCluster::start();
    let primaries = cluster.primaries();
    let (from, to) = (primaries[0], primaries[1]);
    let before_from = cluster.slots_of(from);
    let before_to = cluster.slots_of(to).len();
    // A key in each of the source's first slots, so whichever move carry keys.
    let keyed: Vec<(u16, String)> = before_from[..10]
        .iter()
        .map(|&slot| (slot, RedisCluster::key_in_slot(slot)))
        .collect();
    for (slot, key) in &keyed {
        assert_eq!(from.cli(&["SET", key, &slot.to_string()]), "OK");
    }

    let moved = cluster.reshard(from, to, 5);
    assert_eq!(moved.len(), 5);
    assert_eq!(cluster.slots_of(from).len(), before_from.len() - 5);
    assert_eq!(cluster.slots_of(to).len(), before_to + 5);
    for slot in &moved {
        assert!(before_from.contains(slot));
        assert_eq!(cluster.primary_for_slot(*slot).port(), to.port());
    }
    for (slot, key) in &keyed {
        let owner = if moved.contains(slot) { to } else { from };
        assert_eq!(
            owner.cli(&["GET", key]),
            slot.to_string(),
            "{key} in slot {slot}"
        );
        assert_eq!(cluster.cli(&["GET", key]), slot.to_string());
    }
}

#[test]
fn tls_cluster_talks_tls_between_nodes() {
    let cluster = RedisCluster::builder().tls().start();
    let tls_urls = cluster.tls_urls();
    assert_eq!(tls_urls.len(), 6);
    for (url, node) in tls_urls.iter().zip(cluster.nodes()) {
        assert_eq!(*url, node.tls_url());
        assert_eq!(
            node.certificates().ca_pem(),
            cluster.certificates().ca_pem()
        );
        assert_eq!(
            node.cli(&["CONFIG", "GET", "tls-cluster"]),
            "tls-cluster\nyes"
        );
        assert_eq!(
            node.cli(&["CONFIG", "GET", "tls-replication"]),
            "tls-replication\nyes"
        );
    }
    // redis-cli -c over TLS follows redirects to TLS ports.
    let key = "{tls}:k";
    assert_eq!(cluster.cli(&["SET", key, "v"]), "OK");
    assert_eq!(cluster.cli(&["GET", key]), "v");
    let slot = RedisCluster::slot_of(key);
    let owner = cluster.primary_for_slot(slot);
    // Plain connections are redirected to plain ports.
    let other = cluster.other_primary(slot);
    assert_eq!(
        other.cli(&["GET", key]),
        format!("MOVED {slot} 127.0.0.1:{}", owner.port())
    );
    // MIGRATE between nodes goes over TLS.
    assert_eq!(cluster.migrate_slot(slot, other), 1);
    assert_eq!(other.cli(&["GET", key]), "v");
    assert_eq!(cluster.cli(&["GET", key]), "v");
}
