export default function Alerts() {
  return <p>Alerts</p>;
}
