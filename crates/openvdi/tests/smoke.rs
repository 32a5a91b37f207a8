//! In-process smoke test of the whole call sequence (threads here only check the
//! API; the multi-process behaviour is covered by tests/processes.rs).
use openvdi::*;
use std::time::Duration;

#[test]
fn backup_stream_in_process() {
    let name = format!("smoke-{}", std::process::id());
    let set = ClientSet::create(
        &name,
        &VdConfig {
            device_count: 1,
            features: vdf::VDF_RequestComplete,
            ..Default::default()
        },
    )
    .unwrap();
    let n2 = name.clone();
    let server = std::thread::spawn(move || {
        let s = ServerSet::open(&n2, Timeout::from_millis(5000)).unwrap();
        let c = s.get_configuration().unwrap();
        assert_eq!(c.device_count, 1);
        s.begin_configuration(&ServerConfig {
            features: vdf::VDF_WriteMedia | vdf::VDF_CompleteEnabled,
            block_size: 512,
            alignment: 0,
            max_transfer_size: 65536,
            timeout: Timeout::INFINITE,
            device_names: vec![],
        })
        .unwrap();
        s.request_buffers(65536, 0, 4).unwrap();
        s.end_configuration().unwrap();
        let d = s.open_device(&n2).unwrap();
        let mut bufs: Vec<_> = (0..4)
            .map(|_| s.allocate_buffer(65536, 0).unwrap())
            .collect();
        for (i, b) in bufs.iter_mut().enumerate() {
            b.as_mut_slice().fill(i as u8 + 1);
        }
        for (i, b) in bufs.iter().enumerate() {
            d.send_command(&ServerCommand {
                code: vdc::VDC_Write,
                size: 65536,
                position: 0,
                buffer: Some(b),
                tag: i as u64,
            })
            .unwrap();
        }
        for _ in 0..4 {
            let c = d.wait_completion(Timeout::from_millis(5000)).unwrap();
            assert_eq!(c.completion_code, 0);
            assert_eq!(c.bytes_transferred, 65536);
        }
        d.send_command(&ServerCommand {
            code: vdc::VDC_Flush,
            size: 0,
            position: 0,
            buffer: None,
            tag: 9,
        })
        .unwrap();
        assert_eq!(
            d.wait_completion(Timeout::from_millis(5000)).unwrap().tag,
            9
        );
        d.send_command(&ServerCommand {
            code: vdc::VDC_Complete,
            size: 0,
            position: 0,
            buffer: None,
            tag: 10,
        })
        .unwrap();
        assert_eq!(
            d.wait_completion(Timeout::from_millis(5000)).unwrap().tag,
            10
        );
        d.close().unwrap();
        s.close().unwrap();
    });
    let cfg = set.get_configuration(Timeout::from_millis(5000)).unwrap();
    assert!(cfg.features & vdf::VDF_WriteMedia != 0);
    assert!(cfg.features & vdf::VDF_CompleteEnabled != 0);
    let dev = set.open_device(&name).unwrap();
    let mut got = Vec::new();
    let mut codes = Vec::new();
    loop {
        match dev.get_command(Timeout::from_millis(5000)) {
            Ok(cmd) => {
                codes.push(cmd.code());
                got.extend_from_slice(cmd.buffer());
                dev.complete_command(&cmd, 0, cmd.size(), 0).unwrap();
                assert_eq!(cmd.code(), codes[codes.len() - 1]);
            }
            Err(Error::Close) => break,
            Err(e) => panic!("{e}"),
        }
    }
    server.join().unwrap();
    assert_eq!(codes, vec![2, 2, 2, 2, 12, 19]);
    assert_eq!(got.len(), 4 * 65536);
    assert!(got[..65536].iter().all(|&b| b == 1) && got[3 * 65536..].iter().all(|&b| b == 4));
    set.close().unwrap();
    assert!(!std::path::Path::new(&format!("/dev/shm/openvdi-ctl.{name}")).exists());
    let _ = Duration::ZERO;
}
