export default function Overview() {
  return <p>Overview</p>;
}
