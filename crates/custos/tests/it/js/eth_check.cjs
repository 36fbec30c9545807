// An independent Ethereum library (ethers, from the npm registry) for the Ethereum signer's
// test (issue 14). NODE_PATH points at the node_modules holding ethers.
//
//   node eth_check.cjs recover <raw transaction hex>
//       -> JSON {from, type, chainId}: the sender ethers recovers, the type, the chain id
//   node eth_check.cjs typed <signer url> <address>
//       -> JSON {signature, recovered}: EIP-712's example (Mail) signed through the signer
//          by ethers' JsonRpcSigner (eth_signTypedData_v4), and the address
//          ethers.verifyTypedData recovers from it
const { ethers } = require("ethers");

async function main() {
  const [command, a, b] = process.argv.slice(2);
  if (command === "recover") {
    const tx = ethers.Transaction.from(a);
    console.log(JSON.stringify({ from: tx.from, type: tx.type, chainId: tx.chainId.toString() }));
  } else if (command === "typed") {
    const provider = new ethers.JsonRpcProvider(a, undefined, { staticNetwork: true });
    const signer = await provider.getSigner(b);
    const domain = {
      name: "Ether Mail",
      version: "1",
      chainId: 31337,
      verifyingContract: "0xCcCCccccCCCCcCCCCCCcCcCccCcCCCcCcccccccC",
    };
    const types = {
      Person: [
        { name: "name", type: "string" },
        { name: "wallet", type: "address" },
      ],
      Mail: [
        { name: "from", type: "Person" },
        { name: "to", type: "Person" },
        { name: "contents", type: "string" },
      ],
    };
    const value = {
      from: { name: "Cow", wallet: "0xCD2a3d9F938E13CD947Ec05AbC7FE734Df8DD826" },
      to: { name: "Bob", wallet: "0xbBbBBBBbbBBBbbbBbbBbbbbBBbBbbbbBbBbbBBbB" },
      contents: "Hello, Bob!",
    };
    const signature = await signer.signTypedData(domain, types, value);
    const recovered = ethers.verifyTypedData(domain, types, value, signature);
    console.log(JSON.stringify({ signature, recovered }));
    provider.destroy();
  } else {
    throw new Error("unknown command " + command);
  }
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
