use super::*;

fn config() -> GroupConfig {
    GroupConfig {
        initial_rebalance_delay: Duration::ZERO,
        min_session_timeout: Duration::from_millis(10),
        ..GroupConfig::default()
    }
}

fn join_req(member: &str, instance: Option<&str>, session_ms: u64) -> JoinRequest {
    JoinRequest {
        group_id: "g".into(),
        member_id: member.into(),
        instance_id: instance.map(str::to_string),
        client_id: "client".into(),
        client_host: "/127.0.0.1".into(),
        session_timeout: Duration::from_millis(session_ms),
        rebalance_timeout: Duration::from_millis(300),
        protocol_type: "consumer".into(),
        protocols: vec![
            ("range".into(), Bytes::from_static(b"meta")),
            ("roundrobin".into(), Bytes::new()),
        ],
        require_known_member_id: true,
    }
}

fn now<T>(r: Reply<T>) -> T {
    match r {
        Reply::Now(t) => t,
        Reply::Later(_) => panic!("expected an immediate answer"),
    }
}

fn later<T>(r: Reply<T>) -> oneshot::Receiver<T> {
    match r {
        Reply::Later(rx) => rx,
        Reply::Now(_) => panic!("expected to wait"),
    }
}

/// A dynamic member's two-step join: MEMBER_ID_REQUIRED, then a join that waits.
fn first_join(c: &Coordinator) -> (String, oneshot::Receiver<JoinResult>) {
    let r = now(c.join(join_req("", None, 10_000)));
    assert_eq!(r.error, Some(ResponseError::MemberIdRequired));
    let id = r.member_id.clone();
    (id.clone(), later(c.join(join_req(&id, None, 10_000))))
}

#[tokio::test]
async fn two_members_join_sync_and_get_their_assignments() -> Result<(), String> {
    let c = Coordinator::new(config());
    let (a, ja) = first_join(&c);
    // One member, delay zero: the join completes at once (generation 1, a leads).
    let ra = ja.await.map_err(|e| e.to_string())?;
    assert_eq!(
        (ra.error, ra.generation, ra.leader.as_str()),
        (None, 1, a.as_str())
    );
    assert_eq!(ra.protocol_name.as_deref(), Some("range"));
    assert_eq!(ra.members.len(), 1);
    let sa = c.sync(
        "g",
        1,
        &a,
        None,
        (None, None),
        vec![(a.clone(), Bytes::from_static(b"all"))],
    );
    assert_eq!(
        later(sa).await.map_err(|e| e.to_string())?.assignment,
        Bytes::from_static(b"all")
    );
    assert_eq!(c.heartbeat("g", 1, &a, None), None);

    // b arrives: a learns of the rebalance by heartbeat and rejoins.
    let (b, jb) = first_join(&c);
    assert_eq!(
        c.heartbeat("g", 1, &a, None),
        Some(ResponseError::RebalanceInProgress)
    );
    let ja = later(c.join(join_req(&a, None, 10_000)));
    let (ra, rb) = (
        ja.await.map_err(|e| e.to_string())?,
        jb.await.map_err(|e| e.to_string())?,
    );
    assert_eq!((ra.generation, rb.generation), (2, 2));
    assert_eq!(ra.leader, a);
    assert_eq!(ra.members.len(), 2, "the leader sees every member");
    assert!(rb.members.is_empty(), "followers see none");
    // The follower waits for the leader's assignment.
    let sb = later(c.sync("g", 2, &b, None, (None, None), vec![]));
    let sa = c.sync(
        "g",
        2,
        &a,
        None,
        (Some("consumer"), Some("range")),
        vec![
            (a.clone(), Bytes::from_static(b"A")),
            (b.clone(), Bytes::from_static(b"B")),
        ],
    );
    assert_eq!(
        later(sa).await.map_err(|e| e.to_string())?.assignment,
        Bytes::from_static(b"A")
    );
    assert_eq!(
        sb.await.map_err(|e| e.to_string())?.assignment,
        Bytes::from_static(b"B")
    );
    // Old generation and unknown members are refused.
    assert_eq!(
        c.heartbeat("g", 1, &b, None),
        Some(ResponseError::IllegalGeneration)
    );
    assert_eq!(
        c.heartbeat("g", 2, "nobody", None),
        Some(ResponseError::UnknownMemberId)
    );
    assert_eq!(
        c.check_commit("g", 1, &a, None),
        Err(ResponseError::IllegalGeneration)
    );
    assert_eq!(c.check_commit("g", 2, &a, None), Ok(()));
    // A manual (generation -1) commit is refused while the group has members.
    assert_eq!(
        c.check_commit("g", -1, "", None),
        Err(ResponseError::UnknownMemberId)
    );
    Ok(())
}

#[tokio::test]
async fn leaving_and_expiring_members_trigger_rebalances() -> Result<(), String> {
    let c = Coordinator::new(config());
    let (a, ja) = first_join(&c);
    ja.await.map_err(|e| e.to_string())?;
    let _ = later(c.sync("g", 1, &a, None, (None, None), vec![])).await;
    let (b, jb) = first_join(&c);
    let ja = later(c.join(join_req(&a, None, 10_000)));
    ja.await.map_err(|e| e.to_string())?;
    jb.await.map_err(|e| e.to_string())?;
    // b leaves during CompletingRebalance: a must rejoin alone.
    assert_eq!(
        c.leave("g", &[(b.clone(), None)])
            .map_err(|e| e.to_string())?,
        vec![None]
    );
    assert_eq!(
        c.heartbeat("g", 2, &a, None),
        Some(ResponseError::RebalanceInProgress)
    );
    let r = later(c.join(join_req(&a, None, 10_000)))
        .await
        .map_err(|e| e.to_string())?;
    assert_eq!((r.generation, r.members.len()), (3, 1));
    let _ = later(c.sync("g", 3, &a, None, (None, None), vec![])).await;
    // a stops heartbeating: after its session timeout the group is empty.
    let (x, jx) = {
        let r = now(c.join(join_req("", None, 50)));
        let id = r.member_id.clone();
        (id.clone(), later(c.join(join_req(&id, None, 50))))
    };
    let _ = c.join(join_req(&a, None, 10_000));
    jx.await.map_err(|e| e.to_string())?;
    tokio::time::sleep(Duration::from_millis(120)).await;
    c.tick();
    assert_eq!(
        c.heartbeat("g", 4, &x, None),
        Some(ResponseError::UnknownMemberId),
        "x expired"
    );
    let list = c.list();
    assert_eq!(list[0].3, 1, "only a is left");
    Ok(())
}

#[tokio::test]
async fn rebalance_deadline_drops_members_that_do_not_rejoin() -> Result<(), String> {
    let c = Coordinator::new(config());
    let (a, ja) = first_join(&c);
    ja.await.map_err(|e| e.to_string())?;
    let _ = later(c.sync("g", 1, &a, None, (None, None), vec![])).await;
    // b joins; a never rejoins (but keeps its session alive by heartbeating).
    let (_b, jb) = first_join(&c);
    tokio::time::sleep(Duration::from_millis(350)).await;
    c.tick();
    let rb = jb.await.map_err(|e| e.to_string())?;
    assert_eq!(
        (rb.generation, rb.members.len()),
        (2, 1),
        "a was dropped at the rebalance timeout"
    );
    assert_eq!(
        c.heartbeat("g", 2, &a, None),
        Some(ResponseError::UnknownMemberId)
    );
    Ok(())
}

#[tokio::test]
async fn static_members_are_fenced_and_replaced() -> Result<(), String> {
    let c = Coordinator::new(config());
    // Static members join without MEMBER_ID_REQUIRED.
    let ja = later(c.join(join_req("", Some("i-1"), 10_000)));
    let ra = ja.await.map_err(|e| e.to_string())?;
    assert_eq!(ra.error, None);
    let old = ra.member_id.clone();
    let _ = later(c.sync(
        "g",
        1,
        &old,
        Some("i-1"),
        (None, None),
        vec![(old.clone(), Bytes::from_static(b"P"))],
    ))
    .await;
    // A restarted instance (same instance id) takes over without a rebalance; the old member
    // id is fenced. It was the leader: the answer names the old id so it computes nothing.
    let rn = now(c.join(join_req("", Some("i-1"), 10_000)));
    assert_ne!(rn.member_id, old);
    assert_eq!(
        (rn.generation, rn.leader.as_str(), rn.members.len()),
        (1, old.as_str(), 0)
    );
    let sn = now(c.sync("g", 1, &rn.member_id, Some("i-1"), (None, None), vec![]));
    assert_eq!(
        sn.assignment,
        Bytes::from_static(b"P"),
        "the current assignment, unchanged"
    );
    assert_eq!(
        c.heartbeat("g", rn.generation, &old, Some("i-1")),
        Some(ResponseError::FencedInstanceId)
    );
    assert_eq!(
        c.check_commit("g", rn.generation, &old, Some("i-1")),
        Err(ResponseError::FencedInstanceId)
    );
    Ok(())
}

#[tokio::test]
async fn new_group_waits_for_the_initial_delay() -> Result<(), String> {
    let c = Coordinator::new(GroupConfig {
        initial_rebalance_delay: Duration::from_millis(200),
        ..config()
    });
    let started = Instant::now();
    let (_a, ja) = first_join(&c);
    let ticker = async {
        loop {
            tokio::time::sleep(Duration::from_millis(20)).await;
            c.tick();
        }
    };
    let r = tokio::select! {
        r = ja => r.map_err(|e| e.to_string())?,
        _ = ticker => unreachable!(),
    };
    let waited = started.elapsed();
    assert_eq!(r.generation, 1);
    assert!(
        waited >= Duration::from_millis(190) && waited < Duration::from_millis(400),
        "{waited:?}"
    );
    Ok(())
}

#[test]
fn inconsistent_protocols_and_bad_timeouts_are_refused() {
    let c = Coordinator::new(config());
    let r = now(c.join(JoinRequest {
        session_timeout: Duration::from_millis(1),
        ..join_req("", None, 1)
    }));
    assert_eq!(r.error, Some(ResponseError::InvalidSessionTimeout));
    let _ = c.join(join_req("", Some("s"), 10_000));
    let other = JoinRequest {
        protocols: vec![("sticky-only".into(), Bytes::new())],
        ..join_req("", None, 10_000)
    };
    assert_eq!(
        now(c.join(other)).error,
        Some(ResponseError::InconsistentGroupProtocol)
    );
    assert_eq!(c.delete("g"), Err(ResponseError::NonEmptyGroup));
}

#[tokio::test]
async fn idle_groups_without_offsets_are_forgotten_and_groups_with_offsets_kept(
) -> Result<(), String> {
    let c = Coordinator::new(GroupConfig {
        empty_group_expiry: Duration::ZERO,
        ..config()
    });
    // A member joins and leaves: the group is Empty and, with no offsets, forgotten.
    let (a, ja) = first_join(&c);
    ja.await.map_err(|e| e.to_string())?;
    assert_eq!(c.leave("g", &[(a.clone(), None)]), Ok(vec![None]));
    assert_eq!(c.len(), 1);
    c.tick();
    assert!(c.get("g").is_none(), "idle group without offsets forgotten");
    assert!(c.is_empty());

    // Same again, but the member commits offsets: the group stays until they expire.
    let (b, jb) = first_join(&c);
    let rb = jb.await.map_err(|e| e.to_string())?;
    let sb = c.sync(
        "g",
        rb.generation,
        &b,
        None,
        (None, None),
        vec![(b.clone(), Bytes::from_static(b"all"))],
    );
    later(sb).await.map_err(|e| e.to_string())?;
    assert_eq!(c.check_commit("g", rb.generation, &b, None), Ok(()));
    assert_eq!(c.leave("g", &[(b, None)]), Ok(vec![None]));
    c.tick();
    assert!(c.get("g").is_some(), "a group with offsets is kept");
    assert_eq!(c.idle_for("g").map(|d| d.is_some()), Some(true));
    c.forget_idle("g");
    assert!(c.get("g").is_none());
    Ok(())
}

#[test]
fn a_group_with_members_is_never_forgotten() {
    let c = Coordinator::new(GroupConfig {
        empty_group_expiry: Duration::ZERO,
        ..config()
    });
    // A pending member id (MEMBER_ID_REQUIRED) keeps the group.
    let r = now(c.join(join_req("", None, 10_000)));
    assert_eq!(r.error, Some(ResponseError::MemberIdRequired));
    c.tick();
    assert!(c.get("g").is_some());
    c.forget_idle("g");
    assert!(c.get("g").is_some());
}

#[tokio::test]
async fn sessions_and_idle_expiry_run_on_the_injected_clock() -> Result<(), String> {
    let clock = Arc::new(weir_common::clock::ManualClock::default());
    let c = Coordinator::with_clock(
        GroupConfig {
            empty_group_expiry: Duration::from_secs(60),
            ..config()
        },
        clock.clone(),
    );
    let (a, ja) = first_join(&c); // a 10 s session
    ja.await.map_err(|e| e.to_string())?;
    let _ = later(c.sync("g", 1, &a, None, (None, None), vec![])).await;
    // No real time passes; the coordinator only sees the clock.
    clock.advance(Duration::from_secs(9));
    c.tick();
    assert_eq!(c.heartbeat("g", 1, &a, None), None, "alive after 9 s");
    clock.advance(Duration::from_secs(9));
    c.tick();
    assert_eq!(
        c.heartbeat("g", 1, &a, None),
        None,
        "a heartbeat renewed it"
    );
    clock.advance(Duration::from_millis(10_001));
    c.tick();
    assert_eq!(
        c.heartbeat("g", 1, &a, None),
        Some(ResponseError::UnknownMemberId),
        "expired 10 s after its last heartbeat"
    );
    // Empty now, never committed: forgotten after empty_group_expiry, not before.
    clock.advance(Duration::from_secs(59));
    c.tick();
    assert!(c.get("g").is_some(), "kept 59 s");
    clock.advance(Duration::from_secs(2));
    c.tick();
    assert!(c.get("g").is_none(), "forgotten after 60 s");
    Ok(())
}
