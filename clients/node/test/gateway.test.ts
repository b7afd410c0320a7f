// Against a running gateway: tests/client/test_installable_clients.py starts the suite, loads a catalogue
// and runs `npm test` with LONGTAIL_GATEWAY_TARGET (and LONGTAIL_AUTH_TOKEN, LONGTAIL_TEST_USER).
import assert from "node:assert/strict";
import { test } from "node:test";

import * as grpc from "@grpc/grpc-js";

import { GatewayClient, LongtailError } from "../src/index";

const target = process.env.LONGTAIL_GATEWAY_TARGET ?? "";
const token = process.env.LONGTAIL_AUTH_TOKEN || undefined;
const user = process.env.LONGTAIL_TEST_USER ?? "node-user";
const skip = target ? false : "LONGTAIL_GATEWAY_TARGET is not set";
// Generous on purpose: the suite runs with generous hop ceilings too, so that a busy machine
// slows these calls down but never turns them into a fallback or a DEADLINE_EXCEEDED.
const deadlineMs = 120_000;

test("Recommend through the running gateway, then Explain", { skip }, async () => {
  const client = new GatewayClient({ target, token, deadlineMs });
  try {
    await client.waitForReady();
    const answer = await client.recommend({ userId: user, k: 5 });
    const ids = answer.items.map((item) => item.itemId);
    assert.equal(ids.length, 5);
    assert.equal(new Set(ids).size, 5);
    assert.ok(answer.requestId.length > 0);
    assert.equal(answer.fallback, false);
    assert.ok(answer.policyName.length > 0);
    for (const item of answer.items) {
      assert.notEqual(item.reason, "REASON_UNSPECIFIED");
      assert.ok(item.title.length > 0);
    }
    const explained = await client.explain(answer.requestId);
    assert.deepEqual(
      explained.items.map((item) => item.impression?.itemId),
      ids,
    );
  } finally {
    client.close();
  }
});

test("the gateway's own error reasons reach the caller", { skip }, async () => {
  const client = new GatewayClient({ target, token, deadlineMs });
  try {
    await assert.rejects(client.recommend({ userId: user, k: 0 }), (error: unknown) => {
      assert.ok(error instanceof LongtailError);
      assert.equal(error.code, grpc.status.INVALID_ARGUMENT);
      assert.equal(error.reason, "K_OUT_OF_RANGE");
      return true;
    });
  } finally {
    client.close();
  }
});

test("without the token the gateway refuses", { skip: skip || (token ? false : "no token set") }, async () => {
  const client = new GatewayClient({ target, deadlineMs });
  try {
    await assert.rejects(client.recommend({ userId: user, k: 3 }), (error: unknown) => {
      assert.ok(error instanceof LongtailError);
      assert.equal(error.code, grpc.status.UNAUTHENTICATED);
      return true;
    });
  } finally {
    client.close();
  }
});
