/**
 * kv-epp's core-NATS event source (src/events/nats-source.ts) against a real
 * nats-server. The contract under test: once `startNatsEventSource` resolves,
 * the server holds its subscriptions, so every event published after that is
 * delivered. Core NATS has no replay: an event published between "started"
 * and the server registering the subscription would be lost for good, and a
 * late EPP would then miss the message that should trigger its recovery.
 *
 * Skipped with a reason unless nats-server is installed; KV_EPP_REQUIRE_NATS=1
 * makes that a failure.
 */
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { EventIngest, EventMessage } from '../../../src/events/ingest.js';
import { kvEventsSubject, startNatsEventSource } from '../../../src/events/nats-source.js';
import { findNatsServer, type NatsServer, startNatsServer } from '../../support/nats-server.js';
import { poll, QuietLogger } from './support.js';

const BIN = findNatsServer();
if (!BIN && process.env.KV_EPP_REQUIRE_NATS === '1') {
  throw new Error(
    'KV_EPP_REQUIRE_NATS=1 but no nats-server (run `bash scripts/install-test-tools.sh`)',
  );
}

/** An ingest that records what the source pushed. */
function recordingIngest(): { ingest: EventIngest; got: EventMessage[] } {
  const got: EventMessage[] = [];
  const ingest = {
    push(m: EventMessage): boolean {
      got.push(m);
      return true;
    },
  } as unknown as EventIngest;
  return { ingest, got };
}

describe.skipIf(!BIN)('NATS event source', () => {
  let nats: NatsServer;
  let publisher: NatsConnection;

  beforeAll(async () => {
    nats = await startNatsServer({ jetstream: false });
    publisher = await connect({ servers: [nats.url] });
  });
  afterAll(async () => {
    await publisher?.close();
    await nats?.stop();
  });

  it('delivers an event published the moment start resolves (the subscription is on the server)', async () => {
    // Each round: a new source, then at once one publish on another connection.
    const rounds = 25;
    const missed: number[] = [];
    for (let i = 0; i < rounds; i++) {
      const subject = kvEventsSubject(`ns${i}`, 'backend', 'generate');
      const { ingest, got } = recordingIngest();
      const source = await startNatsEventSource({
        servers: nats.url,
        subjects: [kvEventsSubject(`ns${i}`)],
        ingest,
        log: new QuietLogger(),
      });
      publisher.publish(subject, Uint8Array.of(0x92, i, 0));
      // A marker published after the event: once it arrives, the event had its chance too.
      publisher.publish(subject, Uint8Array.of(0x7b));
      await publisher.flush();
      // Delivery keeps one publisher's order: once the marker is in, the event arrived or never will.
      // A lost marker (the subscription came later still) is waited for briefly, then judged.
      await poll(
        `round ${i}'s marker`,
        () => (got.some((m) => m.payload[0] === 0x7b) ? true : undefined),
        500,
        5,
      ).catch(() => undefined);
      const event = got.find((m) => m.payload[0] === 0x92);
      if (!event) missed.push(i);
      else {
        expect(event.codec).toBe('dynamo');
        expect(event.source).toBe(subject);
        expect([...event.payload]).toEqual([0x92, i, 0]);
      }
      await source.close();
    }
    expect(missed).toEqual([]);
  });

  it('reports disconnects and reconnects (metrics) and resubscribes after a server restart', async () => {
    const own = await startNatsServer({ jetstream: false });
    try {
      const { ingest, got } = recordingIngest();
      const seen: string[] = [];
      const source = await startNatsEventSource({
        servers: own.url,
        subjects: [kvEventsSubject('restart')],
        ingest,
        log: new QuietLogger(),
        onConnectionEvent: (e) => seen.push(e),
      });
      await own.restart();
      await poll('reconnect', () => (seen.includes('reconnect') ? true : undefined), 10_000);
      expect(seen.slice(0, 2)).toEqual(['disconnect', 'reconnect']);
      const pub = await connect({ servers: [own.url] });
      pub.publish(kvEventsSubject('restart', 'c', 'e'), Uint8Array.of(0x92, 7));
      await pub.flush();
      await poll('the event after the restart', () => (got.length > 0 ? true : undefined), 5000);
      await pub.close();
      await source.close();
    } finally {
      await own.stop();
    }
  });

  it('tells msgpack from JSON payloads and counts what it received', async () => {
    const { ingest, got } = recordingIngest();
    const source = await startNatsEventSource({
      servers: nats.url,
      subjects: [kvEventsSubject('codec')],
      ingest,
      log: new QuietLogger(),
    });
    const subject = kvEventsSubject('codec', 'c', 'e');
    publisher.publish(subject, Uint8Array.of(0x92, 1, 2));
    publisher.publish(subject, new TextEncoder().encode('{"event_id":1}'));
    publisher.publish(subject, new TextEncoder().encode('[1]'));
    publisher.publish(kvEventsSubject('other', 'c', 'e'), Uint8Array.of(0x92));
    await publisher.flush();
    await poll('three events', () => (got.length >= 3 ? true : undefined), 5000);
    expect(got.map((m) => m.codec)).toEqual(['dynamo', 'dynamo-json', 'dynamo-json']);
    expect(source.received()).toBe(3);
    await source.close();
  });
});
