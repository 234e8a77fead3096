//! A probe of burn-collective 0.21's global level (one process per node, a global orchestrator,
//! websocket transport), run by `scripts/collective_probe.sh`: two node processes on 127.0.0.1
//! all-reduce a small tensor several times, each round bounded in time.
//!
//! `collective_probe orchestrator PORT` runs the orchestrator; `collective_probe node RANK NODES
//! ORCHESTRATOR_PORT DATA_PORT [ring|tree|centralized] [ROUNDS]` registers one device of node
//! `RANK`, sums `[RANK + 1 + round; 4]` over the nodes each round and prints the result, or
//! exits 1 naming the first round that did not finish within 10 s.
//!
//! Measured with Burn 0.21.0: the first round gives the right sum with every strategy, the
//! second never finishes. `SyncService::sync` (burn-collective `global/node/sync.rs`) clears a
//! copy of its list of synced peers instead of the list, so every later sync waits forever.

use std::sync::mpsc;
use std::time::Duration;

use burn::backend::Flex;
use burn::collective::{
    AllReduceStrategy, CollectiveConfig, PeerId, ReduceOperation, all_reduce, finish_collective,
    register,
};
use burn::tensor::{Tensor, TensorPrimitive};

fn arg<T: std::str::FromStr>(args: &[String], i: usize, what: &str) -> T {
    args.get(i)
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("argument {i}: {what}"))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("orchestrator") {
        let port: u16 = arg(&args, 2, "orchestrator port");
        tokio::runtime::Runtime::new()
            .expect("tokio runtime")
            .block_on(burn_collective::start_global_orchestrator(port));
        return;
    }
    let rank: u32 = arg(&args, 2, "node rank");
    let nodes: u32 = arg(&args, 3, "number of nodes");
    let orchestrator: u16 = arg(&args, 4, "orchestrator port");
    let data: u16 = arg(&args, 5, "data service port");
    let strategy = match args.get(6).map(String::as_str) {
        Some("tree") => AllReduceStrategy::Tree(2),
        Some("centralized") => AllReduceStrategy::Centralized,
        _ => AllReduceStrategy::Ring,
    };
    let rounds: u32 = args.get(7).and_then(|a| a.parse().ok()).unwrap_or(5);
    let address = |port: u16| format!("ws://127.0.0.1:{port}").parse().expect("address");
    let config = CollectiveConfig::default()
        .with_num_devices(1)
        .with_num_nodes(nodes)
        .with_global_address(address(orchestrator))
        .with_node_address(address(data))
        .with_data_service_port(data)
        .with_global_all_reduce_strategy(strategy);
    let (done, results) = mpsc::channel();
    std::thread::spawn(move || {
        let device = Default::default();
        let peer = PeerId::from(0usize);
        register::<Flex>(peer, device, config).expect("register");
        for round in 0..rounds {
            let value = (rank + 1 + round) as f32;
            let t = Tensor::<Flex, 1>::from_floats([value; 4], &device);
            let sum = all_reduce::<Flex>(peer, t.into_primitive().tensor(), ReduceOperation::Sum)
                .expect("all_reduce");
            let sum = Tensor::<Flex, 1>::from_primitive(TensorPrimitive::Float(sum));
            let _ = done.send((round, sum.into_data().to_vec::<f32>().expect("f32")));
        }
        let _ = finish_collective::<Flex>(peer);
    });
    for round in 0..rounds {
        match results.recv_timeout(Duration::from_secs(10)) {
            Ok((r, sum)) => println!("node {rank} round {r}: {sum:?}"),
            Err(_) => {
                println!("node {rank} round {round}: no result within 10 s");
                std::process::exit(1);
            }
        }
    }
    println!("node {rank}: all {rounds} rounds done");
}
