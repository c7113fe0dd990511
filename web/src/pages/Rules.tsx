export default function Rules() {
  return <p>Rules</p>;
}
