/**
 * Example: ask the gateway for recommendations with a tail quota, then explain the answer.
 *
 *   LONGTAIL_GATEWAY_TARGET=127.0.0.1:50050 [LONGTAIL_AUTH_TOKEN=...] npm run example -- USER_ID
 */

import { GatewayClient, LongtailError } from "./index";

async function main(): Promise<void> {
  const userId = process.argv[2] ?? "user-0001";
  const client = new GatewayClient({
    target: process.env.LONGTAIL_GATEWAY_TARGET ?? "127.0.0.1:50050",
    token: process.env.LONGTAIL_AUTH_TOKEN || undefined,
    deadlineMs: 2000,
  });
  try {
    const answer = await client.recommend({
      userId,
      k: 10,
      policy: { tailQuota: { minTailShare: 0.4 }, explore: { slots: 1 } },
    });
    console.log(`request ${answer.requestId}: policy ${answer.policyName}${answer.fallback ? " (fallback)" : ""}`);
    for (const item of answer.items) {
      const kind = item.isCold ? "cold" : item.isTail ? "tail" : "head";
      console.log(`${String(item.position).padStart(2)}  ${item.itemId.padEnd(14)} ${kind.padEnd(4)}  ${item.reason.replace("REASON_", "").toLowerCase().padEnd(10)} ${item.title}`);
    }
    const explained = await client.explain(answer.requestId);
    console.log(`explained: ${explained.items.length} impressions logged for ${explained.userId}`);
  } catch (error) {
    if (error instanceof LongtailError) {
      console.error(`failed: ${error.message}`);
      process.exitCode = 1;
    } else {
      throw error;
    }
  } finally {
    client.close();
  }
}

void main();
