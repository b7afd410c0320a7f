// The wrapper against an in-process gateway stand-in (no suite needed): token, deadline, errors.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import * as grpc from "@grpc/grpc-js";

import type { GatewayServiceHandlers } from "../src/generated/longtail/gateway/v1/GatewayService";
import type { RecommendResponse } from "../src/generated/longtail/gateway/v1/RecommendResponse";
import { encodeStatusDetails, GatewayClient, LongtailError, loadGatewayProto } from "../src/index";

interface Seen {
  authorization?: grpc.MetadataValue;
  deadline: grpc.Deadline;
}

const seen: Seen[] = [];
// Generous: these calls test behaviour, not speed (the in-process stand-in answers at once).
const deadlineMs = 60_000;
let server: grpc.Server;
let target = "";

const handlers: GatewayServiceHandlers = {
  Recommend(call, callback) {
    seen.push({ authorization: call.metadata.get("authorization")[0], deadline: call.getDeadline() });
    const { userId, k } = call.request;
    if (k < 1 || k > 100) {
      const metadata = new grpc.Metadata();
      metadata.set(
        "grpc-status-details-bin",
        encodeStatusDetails(grpc.status.INVALID_ARGUMENT, "k must be in 1..100", {
          reason: "K_OUT_OF_RANGE",
          domain: "longtail.dev",
          metadata: { k: String(k) },
        }),
      );
      callback({ code: grpc.status.INVALID_ARGUMENT, details: "k must be in 1..100", metadata });
      return;
    }
    const answer: RecommendResponse = {
      requestId: `req-${userId}`,
      policyName: "relevance",
      items: Array.from({ length: k }, (_, i) => ({
        itemId: `i${i}`,
        position: i,
        reason: i % 3 === 2 ? "REASON_TAIL_BOOST" : "REASON_RELEVANCE",
        isTail: i % 3 === 2,
      })),
    };
    // "slow" is never answered (the server's shutdown ends it): the client's deadline must fire
    // however busy the machine is, with no race against a timer on this side.
    if (userId !== "slow") callback(null, answer);
  },
  Feedback(call, callback) {
    callback(null, { recorded: call.request.itemId !== "" });
  },
  ExplainRecommendation(call, callback) {
    callback(null, { requestId: call.request.requestId, userId: "u1", items: [] });
  },
};

before(async () => {
  const proto = loadGatewayProto();
  server = new grpc.Server();
  server.addService(proto.longtail.gateway.v1.GatewayService.service, handlers);
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync("127.0.0.1:0", grpc.ServerCredentials.createInsecure(), (error, bound) =>
      error ? reject(error) : resolve(bound),
    ),
  );
  target = `127.0.0.1:${port}`;
});

after(() => server.forceShutdown());

test("recommend returns typed items and sends the bearer token", async () => {
  const client = new GatewayClient({ target, token: "s3cret", deadlineMs });
  try {
    const answer = await client.recommend({ userId: "u1", k: 4 });
    assert.equal(answer.requestId, "req-u1");
    assert.deepEqual(
      answer.items.map((item) => [item.itemId, item.reason, item.isTail]),
      [
        ["i0", "REASON_RELEVANCE", false],
        ["i1", "REASON_RELEVANCE", false],
        ["i2", "REASON_TAIL_BOOST", true],
        ["i3", "REASON_RELEVANCE", false],
      ],
    );
    assert.equal(seen.at(-1)?.authorization, "Bearer s3cret");
    assert.equal((await client.feedback({ requestId: "req-u1", itemId: "i2", kind: "INTERACTION_KIND_CLICK" })).recorded, true);
  } finally {
    client.close();
  }
});

test("no token configured: no authorization header", async () => {
  const client = new GatewayClient({ target, deadlineMs });
  try {
    await client.recommend({ userId: "u2", k: 1 });
    assert.equal(seen.at(-1)?.authorization, undefined);
  } finally {
    client.close();
  }
});

test("every call carries the client's deadline", async () => {
  const client = new GatewayClient({ target, deadlineMs: 60_000 });
  try {
    const started = Date.now();
    await client.recommend({ userId: "u3", k: 1 });
    const finished = Date.now();
    const deadline = seen.at(-1)?.deadline;
    // The server saw the caller's deadline (a Date or epoch ms; Infinity when none was sent). It
    // travels as a relative timeout, so it lands 60 s after a moment between the call and the
    // answer; the second of slack below only absorbs a wall-clock step, not load.
    const at = deadline instanceof Date ? deadline.getTime() : Number(deadline);
    assert.ok(Number.isFinite(at), `deadline ${String(deadline)}`);
    assert.ok(at >= started + 59_000 && at <= finished + 60_000, `deadline ${String(deadline)}`);
  } finally {
    client.close();
  }
});

test("an answer later than the deadline fails with DEADLINE_EXCEEDED", async () => {
  const client = new GatewayClient({ target, deadlineMs: 200 });
  try {
    await assert.rejects(client.recommend({ userId: "slow", k: 1 }), (error: unknown) => {
      assert.ok(error instanceof LongtailError);
      assert.equal(error.code, grpc.status.DEADLINE_EXCEEDED);
      return true;
    });
  } finally {
    client.close();
  }
});

test("a service error carries the ErrorInfo reason", async () => {
  const client = new GatewayClient({ target, deadlineMs });
  try {
    await assert.rejects(client.recommend({ userId: "u1", k: 0 }), (error: unknown) => {
      assert.ok(error instanceof LongtailError);
      assert.equal(error.code, grpc.status.INVALID_ARGUMENT);
      assert.equal(error.reason, "K_OUT_OF_RANGE");
      assert.deepEqual(error.metadata, { k: "0" });
      return true;
    });
  } finally {
    client.close();
  }
});
